"""Shared pytest fixtures: paths to the official-format test checkpoints (``shared/`` beside the repo) and
small structures for the OpenMM / CLI tests."""
from __future__ import annotations

from pathlib import Path

import pytest

#: shared/ lies beside the repository (CI clones the repo with shared/ next to it)
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL_PARITY_DIR = SHARED_DIR / "fixtures" / "official_parity"

# ACE-ALA-NME (alanine dipeptide, 22 atoms), built for these tests with PDBFixer from a 7-atom backbone
# sketch and minimised with amber14 (so amber14-all.xml templates it).
ALA2_PDB = """\
HETATM    1  CH3 ACE A   1       0.092  -0.156   0.269  1.00  0.00           C
HETATM    2  H1  ACE A   1       0.318  -0.890   1.040  1.00  0.00           H
HETATM    3  H2  ACE A   1      -0.113  -0.658  -0.675  1.00  0.00           H
HETATM    4  H3  ACE A   1      -0.775   0.432   0.566  1.00  0.00           H
HETATM    5  C   ACE A   1       1.274   0.769   0.096  1.00  0.00           C
HETATM    6  O   ACE A   1       1.146   1.972   0.281  1.00  0.00           O
ATOM      7  N   ALA A   2       2.426   0.202  -0.254  1.00  0.00           N
ATOM      8  H   ALA A   2       2.465  -0.802  -0.352  1.00  0.00           H
ATOM      9  CA  ALA A   2       3.685   0.923  -0.445  1.00  0.00           C
ATOM     10  HA  ALA A   2       3.716   1.767   0.246  1.00  0.00           H
ATOM     11  C   ALA A   2       4.894   0.017  -0.143  1.00  0.00           C
ATOM     12  CB  ALA A   2       3.733   1.467  -1.881  1.00  0.00           C
ATOM     13  HB1 ALA A   2       2.881   2.126  -2.055  1.00  0.00           H
ATOM     14  HB2 ALA A   2       4.652   2.034  -2.034  1.00  0.00           H
ATOM     15  HB3 ALA A   2       3.700   0.641  -2.593  1.00  0.00           H
ATOM     16  O   ALA A   2       4.777  -1.208  -0.166  1.00  0.00           O
HETATM   17  N   NME A   3       6.057   0.624   0.126  1.00  0.00           N
HETATM   18  H   NME A   3       6.075   1.632   0.121  1.00  0.00           H
HETATM   19  C   NME A   3       7.299  -0.086   0.425  1.00  0.00           C
HETATM   20  H1  NME A   3       7.567  -0.731  -0.415  1.00  0.00           H
HETATM   21  H2  NME A   3       8.108   0.624   0.606  1.00  0.00           H
HETATM   22  H3  NME A   3       7.163  -0.710   1.311  1.00  0.00           H
TER      23      NME A   3
CONECT    1    2    3    4    5
CONECT    5    1    6    7
CONECT   11   17
CONECT   17   18   11   19
CONECT   19   20   21   22   17
END
"""


def water_pdb(n_waters: int = 3, spacing: float = 3.1, box_angstrom=None) -> str:
    """A small PDB of `n_waters` TIP3P-like waters on a line/grid (Å), optionally with a CRYST1 box."""
    import math

    lines = []
    if box_angstrom is not None:
        lines.append("CRYST1%9.3f%9.3f%9.3f  90.00  90.00  90.00 P 1           1" % tuple(box_angstrom))
    k = max(1, math.ceil(n_waters ** (1 / 3)))
    serial = 1
    for w in range(n_waters):
        ox = 1.0 + spacing * (w % k)
        oy = 1.0 + spacing * ((w // k) % k)
        oz = 1.0 + spacing * (w // (k * k))
        atoms = [("O", ox, oy, oz), ("H1", ox + 0.9572, oy, oz), ("H2", ox - 0.24, oy + 0.927, oz)]
        for name, x, y, z in atoms:
            lines.append("HETATM%5d %-4s HOH A%4d    %8.3f%8.3f%8.3f  1.00  0.00          %2s"
                         % (serial, " " + name if len(name) < 4 else name, w + 1, x, y, z, name[0]))
            serial += 1
    lines.append("END")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def official_parity_dir() -> Path:
    if not OFFICIAL_PARITY_DIR.is_dir():
        pytest.fail(f"test checkpoints not found at {OFFICIAL_PARITY_DIR} (shared/ must lie beside the repo)")
    return OFFICIAL_PARITY_DIR


@pytest.fixture(scope="session")
def tiny_qk_checkpoint(official_parity_dir) -> Path:
    return official_parity_dir / "tiny_qk" / "checkpoint.pt"


@pytest.fixture(scope="session")
def tiny_direct_checkpoint(official_parity_dir) -> Path:
    return official_parity_dir / "tiny_direct" / "checkpoint.pt"


@pytest.fixture()
def ala2_pdb(tmp_path) -> Path:
    p = tmp_path / "ala2.pdb"
    p.write_text(ALA2_PDB)
    return p


@pytest.fixture()
def water_pdb_factory(tmp_path):
    def make(n_waters=3, spacing=3.1, box_angstrom=None, name="water.pdb"):
        p = tmp_path / name
        p.write_text(water_pdb(n_waters, spacing, box_angstrom))
        return p

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module with torch on one thread (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
