"""tools/count_lines.py: the sizes issue 23 tracks, as rows that parse."""

import re
import subprocess
import sys

from helpers import REPO

SCRIPT = REPO / "tools" / "count_lines.py"
ROW = re.compile(r"^(.+?)\s+(\d+(?:\.\d+)?)(?:\s+<=(\d+)\s+(PASS|FAIL))?$")


def count_lines(*args):
    """Run the script, return {row name: (value, target, result)}."""
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
    )
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["size", "value", "target", "result"]
    rows = {}
    for line in lines:
        match = ROW.match(line)
        assert match, f"row does not parse: {line!r}"
        name, value, target, verdict = match.groups()
        rows[name] = (float(value), target and int(target), verdict)
    return rows


def test_count_lines_prints_every_tracked_size_of_this_repository():
    rows = count_lines()
    targets = {
        "recipe train.py lines": 450,
        "Brain methods": 8,
        "hparams/cnn.yaml lines": 180,
        "hparams/cnn_large.yaml lines": 180,
        "plugin sb_urbansound lines": 11000,
    }
    for name, target in targets.items():
        value, printed, verdict = rows[name]
        assert printed == target
        assert verdict == ("PASS" if value <= target else "FAIL")
    for name in ["Brain lines", "plugin sb_urbansound modules"]:
        assert rows[name][0] > 0 and rows[name][1] is None
    for yaml in ["cnn.yaml", "cnn_large.yaml", "train_ecapa_tdnn.yaml"]:
        assert 0 < rows[f"hparams/{yaml} comment %"][0] < 100
        assert f"hparams/{yaml} !apply lines" in rows
    reached = {n: v for n, (v, _, _) in rows.items() if n.endswith(".py")}
    assert "reached sb_urbansound/__init__.py" in reached
    assert rows["reached modules"][0] == len(reached)
    assert rows["reached lines"][0] == sum(reached.values())
    assert sum(reached.values()) <= rows["plugin sb_urbansound lines"][0]


def test_count_lines_follows_lazy_relative_and_yaml_imports(tmp_path):
    recipe = tmp_path / "recipes" / "UrbanSound8k" / "SoundClassification"
    files = {
        recipe / "train.py": (
            "import speechbrain as sb\n"
            "from sb_urbansound.a import f\n\n\n"
            "class B(sb.core.Brain):\n"
            "    def one(self):\n        pass\n\n"
            "    @staticmethod\n    def two():\n        pass\n"
        ),
        recipe / "hparams" / "cnn.yaml": (
            "# not sb_urbansound.unused\nm: !new:sb_urbansound.m.M\n"
        ),
        tmp_path / "sb_urbansound" / "__init__.py": "",
        tmp_path / "sb_urbansound" / "a.py": (
            "def f():\n    from .sub import deep\n"
        ),
        tmp_path / "sb_urbansound" / "sub" / "__init__.py": "",
        tmp_path / "sb_urbansound" / "sub" / "deep.py": (
            "from ..m import M\nfrom .inner import X\n"
        ),
        tmp_path / "sb_urbansound" / "sub" / "inner.py": "X = 1\n",
        tmp_path / "sb_urbansound" / "m.py": "M = 1\n",
        tmp_path / "sb_urbansound" / "unused.py": "x = 1\ny = 2\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    rows = count_lines(tmp_path)
    assert rows["Brain methods"][0] == 2
    assert rows["Brain lines"][0] == 7
    assert rows["hparams/cnn.yaml comment %"][0] == 50.0
    assert rows["plugin sb_urbansound modules"][0] == 7
    reached = sorted(n for n in rows if n.endswith(".py"))
    assert reached == [
        "reached sb_urbansound/__init__.py",
        "reached sb_urbansound/a.py",
        "reached sb_urbansound/m.py",
        "reached sb_urbansound/sub/__init__.py",
        "reached sb_urbansound/sub/deep.py",
        "reached sb_urbansound/sub/inner.py",
    ]
