"""Timing shared by the Python peers (torch_bench, jax_bench, tf_bench), as kiln_bench times."""
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
