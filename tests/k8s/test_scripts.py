"""scripts/kind-up.sh is shellcheck-clean."""

from __future__ import annotations

import subprocess

from tests.servers import find_binary


def test_kind_up_is_shellcheck_clean(root):
    shellcheck = find_binary("shellcheck", "shellcheck")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(root / "scripts" / "kind-up.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
