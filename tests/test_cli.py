import subprocess
import sys

from fleche import __version__


def test_python_m_fleche_version():
    out = subprocess.run(
        [sys.executable, "-m", "fleche", "--version"], capture_output=True, text=True, check=True
    )
    assert __version__ in out.stdout


def test_console_script_version():
    import shutil
    from pathlib import Path

    exe = Path(sys.executable).parent / "fleche"
    script = str(exe) if exe.exists() else shutil.which("fleche")
    assert script, "the fleche console script is installed with the package"
    out = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fleche, version {__version__}"
