"""Console-log parsing must be linear in its input (issue 22 item 7): the pathological
lines that once took 20-40 s for 50 kB (a Tainted: line of spaces, a guard-page header of
dots, a Call Trace: of spaces), each at doubling sizes. Each doubling should at most about
double the time; the script prints the ratios and exits 1 if one exceeds 3.

    .venv/bin/python bench/log_scaling.py
"""

import sys
import time

from dfforensics.logs.analysis import analyze_log_text

CASES = {
    "Tainted: + spaces": lambda n: "[    1.0] CPU: 0 PID: 1 Comm: x Tainted: " + " " * n + "x\n",
    "guard page + dots": lambda n: "BUG: stack guard page was hit at 0000 (stack is " + "." * n + "\n",
    "Call Trace: + spaces": lambda n: "Call Trace:" + " " * n + "x\n",
    "RIP: + digits": lambda n: "RIP: 0010:" + "0" * n + "\n",
    "quoted > lines": lambda n: "> " * (n // 2) + "PANIC: double fault, error_code: 0x0\n",
}
SIZES = (50_000, 100_000, 200_000, 400_000)


def best_of(text: str, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        analyze_log_text(text)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    worst = 0.0
    for name, make in CASES.items():
        times = [best_of(make(size)) for size in SIZES]
        ratios = [later / max(earlier, 1e-4) for earlier, later in zip(times, times[1:])]
        worst = max(worst, *ratios)
        print(f"{name:24} " + "  ".join(f"{size // 1000}k {t * 1000:7.1f} ms" for size, t in zip(SIZES, times))
              + "   doubling ratios " + " ".join(f"{r:.2f}" for r in ratios))
    print(f"worst doubling ratio {worst:.2f} (linear: ~2)")
    return 0 if worst <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
