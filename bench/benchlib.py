"""Helpers shared by the benchmark scripts: statistics, the machine description, BENCHMARKS.md
sections between marker comments, and plots (matplotlib, optional in smoke runs)."""
import datetime
import os
import platform
import re
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")
PLOTS = os.path.join(ROOT, "bench", "plots")


def q(xs, p):
    """Quantile p (0..1) with linear interpolation, as numpy's default."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def ms(s):
    """Seconds to a display string in milliseconds."""
    if s != s:  # NaN
        return "–"
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s * 1000:.0f} ms"


def mib(b):
    return f"{b / 1048576:.2f} MiB"


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    distro = "?"
    if os.path.exists("/etc/os-release"):
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                distro = line.split("=", 1)[1].strip().strip('"')
    rev = os.environ.get("STOCKADE_BENCH_REV")
    return (f"{os.cpu_count()} vCPU {cpu}, {round(mem / 1048576)} GiB, {distro}, kernel {platform.release()}, "
            f"{datetime.date.today()}" + (f"; stockade at {rev}" if rev else ""))


def write_section(name, body, path=BENCHMARKS_MD):
    """Replace the text between <!-- NAME:begin --> and <!-- NAME:end --> in BENCHMARKS.md (the
    markers are appended at the end when missing)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        a = text.index(begin)
        b = text.index(end) + len(end)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote section {name} of {path}")


def pyplot():
    """matplotlib.pyplot with a non-interactive backend, or None when it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")
