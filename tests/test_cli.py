import subprocess
import sys

from fleche import __version__


def test_python_m_fleche_version():
    out = subprocess.run(
        [sys.executable, "-m", "fleche", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout
