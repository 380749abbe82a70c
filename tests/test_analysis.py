"""Analysis plots: energy trace from a StateDataReporter CSV and the water O-O g(r) with mdtraj."""
import numpy as np
import pytest

from openmm_e2former import analysis

pytest.importorskip("matplotlib")


def test_read_state_csv_and_energy_plot(tmp_path):
    csv = tmp_path / "run.csv"
    csv.write_text('#"Step","Time (ps)","Potential Energy (kJ/mole)","Kinetic Energy (kJ/mole)",'
                   '"Total Energy (kJ/mole)","Temperature (K)"\n'
                   "2,0.001,-10.0,3.0,-7.0,290.0\n4,0.002,-9.5,2.5,-7.0,280.0\n")
    data = analysis.read_state_csv(str(csv))
    assert np.allclose(data["Potential Energy (kJ/mole)"], [-10.0, -9.5])
    png = analysis.plot_energy_trace(str(csv), str(tmp_path / "e.png"))
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_water_rdf_peaks_at_the_oo_distance(tmp_path):
    """A cubic lattice of waters 3.0 Å apart: no O-O pair below 3.0 Å, a sharp first shell at 3.0 Å."""
    mdtraj = pytest.importorskip("mdtraj")
    n, a = 4, 3.0
    lines, serial = [], 1
    for i in range(n):
        for j in range(n):
            for k in range(n):
                o = np.array([i, j, k]) * a + 0.5
                for name, d in (("O", (0, 0, 0)), ("H1", (0.9572, 0, 0)), ("H2", (-0.24, 0.927, 0))):
                    x, y, z = o + np.array(d)
                    el = name[0]
                    lines.append(f"HETATM{serial:5d} {name:<4s} HOH A{(serial - 1) // 3 + 1:4d}    "
                                 f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {el:>2s}")
                    serial += 1
    pdb = tmp_path / "w.pdb"
    pdb.write_text(f"CRYST1{n * a:9.3f}{n * a:9.3f}{n * a:9.3f}  90.00  90.00  90.00 P 1           1\n"
                   + "\n".join(lines) + "\nEND\n")
    traj = mdtraj.load(str(pdb))
    traj.save_dcd(str(tmp_path / "w.dcd"))
    r, g = analysis.water_oo_rdf(str(tmp_path / "w.dcd"), str(pdb))
    assert np.all(g[r < 2.9] == 0)
    first = (r > 2.9) & (r < 3.1)
    assert g[first].max() > 5.0
    ref = tmp_path / "ref.txt"
    ref.write_text("2.5 0.0\n2.8 2.5\n3.5 0.8\n")
    png = analysis.plot_water_rdf(str(tmp_path / "w.dcd"), str(pdb), str(tmp_path / "g.png"), str(ref))
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_rdf_needs_water_and_a_box(tmp_path):
    pytest.importorskip("mdtraj")
    pdb = tmp_path / "m.pdb"
    pdb.write_text("HETATM    1  C   MOL A   1       0.000   0.000   0.000  1.00  0.00           C\nEND\n")
    import mdtraj

    mdtraj.load(str(pdb)).save_dcd(str(tmp_path / "m.dcd"))
    with pytest.raises(ValueError, match="water oxygens"):
        analysis.water_oo_rdf(str(tmp_path / "m.dcd"), str(pdb))
