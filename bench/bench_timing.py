"""Timing shared by the Python peers (torch_bench, jax_bench, tf_bench), as kiln_bench times."""
import sys
import time


def time_it(fn, warmup, reps):
    """Median seconds of `reps` calls after `warmup` calls and at least 0.3 s of warm-up."""
    warm_until = time.perf_counter() + 0.3
    done = 0
    while done < warmup or time.perf_counter() < warm_until:
        fn()
        done += 1
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def report_case(case, matmul, steps):
    """Times and prints one case as kiln_bench does: `matmul` runs the 1024^3 product once
    (synchronously); `steps` maps each model case to a function that builds its step."""
    if case == "matmul":
        t = time_it(matmul, 3, 20)
        print(f"matmul {t:.9f} gflops={2 * 1024**3 / t / 1e9:.1f}")
        return
    if case not in steps:
        sys.exit(f"unknown case {case}")
    reps = 200 if case == "mlp_step" else 20
    print(f"{case} {time_it(steps[case](), 3, reps):.9f}")
