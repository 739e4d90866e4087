import os
import sys

# Tests import the project as the executor does, and run offline like it (start.py sets the same).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from executor.runtime import prepare_process_env  # noqa: E402

prepare_process_env()
