"""`make bench` runs `python -m tests.bench`: every tests/bench/bench_*.py in turn, each as its own script.

`python -m tests.bench sip --only baseline` runs one of them (bench_sip.py) with the arguments that follow.
"""

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
args = sys.argv[1:]
if args and (here / f"bench_{args[0]}.py").exists():
    scripts, rest = [here / f"bench_{args[0]}.py"], args[1:]
else:
    scripts, rest = sorted(here.glob("bench_*.py")), args
status = 0
for script in scripts:
    print(f"== {script.name}", flush=True)
    status |= subprocess.run([sys.executable, str(script), *rest], cwd=here.parents[1]).returncode
sys.exit(status)
