"""Entry script: `mitmdump -s addon/tap.py`.

Works with or without `pip install -e .`: the package directory next to this file is importable.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llmtap.proxy.addon import LLMTap  # noqa: E402

addons = [LLMTap()]
