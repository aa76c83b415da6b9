// Kiln: the whole public API. `#include <kiln/kiln.h>`.
#pragma once

#include "autograd/gradients.h"
#include "autograd/optim.h"
#include "framework/data.h"
#include "framework/device.h"
#include "framework/dtype.h"
#include "framework/error.h"
#include "framework/graph.h"
#include "framework/graph_io.h"
#include "framework/npy.h"
#include "framework/shape.h"
#include "framework/tensor.h"
#include "ops/array.h"
#include "ops/math.h"
#include "ops/nn.h"
#include "ops/state.h"
#include "runtime/session.h"
