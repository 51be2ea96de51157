"""CPU benchmark of the native 3-bit ops vs stock OpenVINO INT4 / INT3 / widened u3->u4 (the issue #4 table).

The benchmark lives in the package (``nncf_moe3.bench``, also ``nncf-moe3 bench``); this script runs it:

    python examples/bench_cpu.py --keep out/bench --rounds 9 [--node-profile]
"""

import sys

from nncf_moe3.bench import main

if __name__ == "__main__":
    sys.exit(main())
