"""e2former-md end to end on tiny inputs, and its clear errors (exit code 2, no traceback)."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("openmm")
pytest.importorskip("openmmml")

from openmm_e2former.cli import main  # noqa: E402


# torch on one thread: two threads inside an OpenMM PythonForce on this 2-core machine ran ~30x slower
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _common(tmp_path, ckpt, steps=4):
    return ["--model", str(ckpt), "--steps", str(steps), "--report-interval", "2", "--minimize-steps", "3",
            "--platform", "Reference", "--no-progress", "--seed", "1", "--output", str(tmp_path / "out" / "run")]


def test_cli_pure_ml_waters(water_pdb_factory, tiny_qk_checkpoint, tmp_path, capsys):
    pdb = water_pdb_factory(3)
    assert main([str(pdb), "--ml", "all"] + _common(tmp_path, tiny_qk_checkpoint)) == 0
    out = capsys.readouterr().out
    assert "pure ML" in out and "ns/day" in out and "final potential energy" in out
    csv = (tmp_path / "out" / "run.csv").read_text().splitlines()
    assert len(csv) == 1 + 2  # header + 2 reports
    assert (tmp_path / "out" / "run.dcd").stat().st_size > 0
    assert (tmp_path / "out" / "run_final.pdb").exists()


def test_cli_short_run_reports_without_interval(water_pdb_factory, tiny_qk_checkpoint, tmp_path, capsys):
    # no --report-interval: a run under 1000 steps reports every tenth of it (here every step), so a short test
    # run still gets its CSV rows, DCD frames and energy plot; an interval longer than the run says why there are none
    pdb = water_pdb_factory(3)
    common = [a for a in _common(tmp_path, tiny_qk_checkpoint) if a not in ("--report-interval", "2")]
    assert main([str(pdb), "--ml", "all"] + common) == 0
    csv = (tmp_path / "out" / "run.csv").read_text().splitlines()
    assert len(csv) == 1 + 4                                          # header + a report per step of 4
    assert (tmp_path / "out" / "run_energy.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    out2 = tmp_path / "out2" / "run"
    common[common.index("--output") + 1] = str(out2)
    assert main([str(pdb), "--ml", "all", "--report-interval", "10"] + common) == 0
    assert "--steps 4 is fewer than --report-interval 10" in capsys.readouterr().err
    assert not (tmp_path / "out2" / "run_energy.png").exists()


def test_cli_default_report_interval():
    from openmm_e2former.cli import default_report_interval
    assert [default_report_interval(n) for n in (0, 4, 20, 999, 1000, 50000)] == [1, 1, 2, 99, 100, 100]


def test_cli_ml_mm_periodic(water_pdb_factory, tiny_qk_checkpoint, tmp_path, capsys):
    pdb = water_pdb_factory(8, box_angstrom=(12.0, 12.0, 12.0))
    args = [str(pdb), "--ml-residues", "1-2", "--nonbonded-cutoff", "0.55"] + _common(tmp_path, tiny_qk_checkpoint)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ML/MM (6 ML atoms" in out and "periodic" in out
    # PNG plots: energy/temperature trace and the water O-O g(r) of the periodic box
    for name in ("run_energy.png", "run_rdf_OO.png"):
        png = tmp_path / "out" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_cli_ml_mm_dipeptide_with_fix(ala2_pdb, tiny_qk_checkpoint, tmp_path, capsys):
    args = [str(ala2_pdb), "--fix", "--ml-residues", "ALA"] + _common(tmp_path, tiny_qk_checkpoint, steps=2)
    assert main(args) == 0
    assert "ML/MM (10 ML atoms" in capsys.readouterr().out


def _err(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_cli_missing_and_invalid_files(tmp_path, tiny_qk_checkpoint, capsys):
    assert "not found" in _err([str(tmp_path / "nope.pdb"), "--model", str(tiny_qk_checkpoint)], capsys)
    bad = tmp_path / "bad.pdb"
    bad.write_text("this is not a PDB file\nATOM      1  garbage\n")
    assert "e2former-md: error:" in _err([str(bad), "--model", str(tiny_qk_checkpoint)], capsys)
    empty = tmp_path / "empty.pdb"
    empty.write_text("REMARK nothing here\nEND\n")
    assert "no atoms" in _err([str(empty), "--model", str(tiny_qk_checkpoint)], capsys)


def test_cli_model_and_selection_errors(water_pdb_factory, tiny_qk_checkpoint, tmp_path, capsys):
    pdb = water_pdb_factory(2)
    assert "model file not found" in _err([str(pdb), "--model", str(tmp_path / "m.pt")], capsys)
    assert "matches no residue" in _err([str(pdb), "--model", str(tiny_qk_checkpoint), "--ml-residues", "LIG"],
                                        capsys)
    assert "out of range" in _err([str(pdb), "--model", str(tiny_qk_checkpoint), "--ml-atoms", "0-99"], capsys)


def test_cli_unknown_residue_and_unsupported_element(tmp_path, tiny_qk_checkpoint, capsys):
    # a residue amber14 cannot template, in an ML/MM run (MM needs templates for every residue)
    lig = tmp_path / "lig.pdb"
    lig.write_text(
        "HETATM    1  C1  LIG A   1       0.000   0.000   0.000  1.00  0.00           C\n"
        "HETATM    2  O1  LIG A   1       1.400   0.000   0.000  1.00  0.00           O\n"
        "HETATM    3  O   HOH A   2       4.000   0.000   0.000  1.00  0.00           O\n"
        "HETATM    4  H1  HOH A   2       4.957   0.000   0.000  1.00  0.00           H\n"
        "HETATM    5  H2  HOH A   2       3.760   0.927   0.000  1.00  0.00           H\n"
        "END\n")
    err = _err([str(lig), "--model", str(tiny_qk_checkpoint), "--ml-residues", "HOH"], capsys)
    assert "template" in err.lower() and "LIG" in err
    # an element the model does not support (Fm, Z=100)
    fm = tmp_path / "fm.pdb"
    fm.write_text("HETATM    1 FM   FM  A   1       0.000   0.000   0.000  1.00  0.00          FM\n"
                  "HETATM    2  O   HOH A   2       3.000   0.000   0.000  1.00  0.00           O\n"
                  "END\n")
    err = _err([str(fm), "--model", str(tiny_qk_checkpoint), "--steps", "1"], capsys)
    assert "Z=100" in err


def test_cli_console_entry_point_help():
    out = subprocess.run([sys.executable, "-c", "import sys; from openmm_e2former.cli import main; sys.exit(main(['--help']))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "e2former-md" in out.stdout and "--ml-residues" in out.stdout


def test_cli_fix_solvate_ml_mm(ala2_pdb, tiny_qk_checkpoint, tmp_path, capsys):
    """PDBFixer + Modeller.addSolvent (periodic, PME) + ML/MM with link atoms, a couple of steps."""
    args = [str(ala2_pdb), "--fix", "--solvate", "--padding", "0.3", "--ionic-strength", "0",
            "--ml-residues", "ALA"] + _common(tmp_path, tiny_qk_checkpoint, steps=2)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "periodic" in out and "non-periodic" not in out and "2 link-atom caps" in out


def test_cli_without_model_uses_default(water_pdb_factory, tmp_path, capsys):
    pdb = water_pdb_factory(2)
    code = main([str(pdb), "--steps", "1", "--minimize-steps", "-1", "--no-progress", "--platform", "Reference",
                 "--device", "cpu", "--output", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code == 0, err    # the bundled default model


def test_cli_npt_reports_density(water_pdb_factory, tiny_qk_checkpoint, tmp_path, capsys):
    """--pressure adds a Monte Carlo barostat: the box moves, density is logged, plotted and summarised."""
    pdb = water_pdb_factory(8, box_angstrom=(12.0, 12.0, 12.0))
    args = _common(tmp_path, tiny_qk_checkpoint, steps=8)
    assert main([str(pdb), "--pressure", "1.0", "--barostat-interval", "1"] + args) == 0
    out = capsys.readouterr().out
    assert "NPT 1 bar" in out and "density" in out
    rows = (tmp_path / "out" / "run.csv").read_text().splitlines()
    assert "Density" in rows[0] and "Box Volume" in rows[0]
    vols = {r.split(",")[rows[0].split(",").index('"Box Volume (nm^3)"')] for r in rows[1:]}
    assert len(vols) > 1                              # the barostat changed the volume
    assert (tmp_path / "out" / "run_energy.png").stat().st_size > 0


def test_cli_npt_needs_a_box(water_pdb_factory, tiny_qk_checkpoint, tmp_path, capsys):
    pdb = water_pdb_factory(2)                        # no CRYST1: not periodic
    assert main([str(pdb), "--pressure", "1.0"] + _common(tmp_path, tiny_qk_checkpoint)) != 0
    assert "--pressure needs a periodic system" in capsys.readouterr().err


def test_cli_hydrogen_mass_repartitioning(water_pdb_factory, tiny_qk_checkpoint, tmp_path, capsys):
    """--hydrogen-mass: H -> 4 amu taken from the bonded O; each water keeps its mass; the summary says so."""
    import argparse

    from openmm import unit

    from openmm_e2former import cli

    pdb = water_pdb_factory(3)
    args = cli.build_parser().parse_args([str(pdb), "--hydrogen-mass", "4", "--timestep", "1.5"]
                                         + _common(tmp_path, tiny_qk_checkpoint))
    assert isinstance(args, argparse.Namespace) and args.hydrogen_mass == 4.0
    topology, positions = cli.load_structure(str(pdb))
    sim, mode, _, top = cli.build_simulation(args, topology, positions)
    assert "H mass 4 amu (6 H)" in mode
    masses = [sim.system.getParticleMass(i).value_in_unit(unit.amu) for i in range(sim.system.getNumParticles())]
    for atom in top.atoms():
        if atom.element.symbol == "H":
            assert masses[atom.index] == pytest.approx(4.0)
    assert sum(masses) == pytest.approx(3 * (15.99943 + 2 * 1.007947), rel=1e-6)
    for res in top.residues():
        assert sum(masses[a.index] for a in res.atoms()) == pytest.approx(15.99943 + 2 * 1.007947, rel=1e-6)
    assert main([str(pdb), "--hydrogen-mass", "4", "--timestep", "1.5"] + _common(tmp_path, tiny_qk_checkpoint)) == 0
    assert "H mass 4 amu (6 H)" in capsys.readouterr().out
    # too heavy: the oxygen would keep less than 1 amu -> a clear error, exit code 2
    err = _err([str(pdb), "--hydrogen-mass", "9"] + _common(tmp_path, tiny_qk_checkpoint), capsys)
    assert "--hydrogen-mass" in err and "too light" in err
    # a long step without repartitioning gets a note
    assert main([str(pdb), "--timestep", "1.5"] + _common(tmp_path, tiny_qk_checkpoint, steps=2)) == 0
    assert "--hydrogen-mass 4 --timestep 1.5" in capsys.readouterr().err


def test_cli_hydrogen_mass_ml_mm_with_link_atoms(ala2_pdb, tiny_qk_checkpoint, tmp_path, capsys):
    """--hydrogen-mass on an ML/MM dipeptide whose ML region cuts covalent bonds (link-atom caps are virtual
    sites of mass 0 and must stay massless)."""
    from openmm import unit

    from openmm_e2former import cli

    args = cli.build_parser().parse_args([str(ala2_pdb), "--fix", "--ml-residues", "ALA", "--hydrogen-mass", "3"]
                                         + _common(tmp_path, tiny_qk_checkpoint, steps=2))
    topology, positions = cli.fix_structure(str(ala2_pdb), 7.0)
    plain = cli.build_parser().parse_args([str(ala2_pdb), "--fix", "--ml-residues", "ALA"]
                                          + _common(tmp_path, tiny_qk_checkpoint, steps=2))
    sim0, _, _, _ = cli.build_simulation(plain, topology, positions)
    sim, mode, _, top = cli.build_simulation(args, topology, positions)
    m0 = [sim0.system.getParticleMass(i).value_in_unit(unit.amu) for i in range(sim0.system.getNumParticles())]
    m = [sim.system.getParticleMass(i).value_in_unit(unit.amu) for i in range(sim.system.getNumParticles())]
    assert "H mass 3 amu" in mode and sum(m) == pytest.approx(sum(m0), rel=1e-9)
    vsites = [i for i in range(sim.system.getNumParticles()) if sim.system.isVirtualSite(i)]
    assert vsites and "link-atom caps" in mode          # the ML region cuts bonds: caps exist
    assert all(m[i] == 0.0 for i in vsites)
    hs = [a.index for a in top.atoms() if a.element is not None and a.element.symbol == "H"
          and not sim.system.isVirtualSite(a.index)]
    assert hs and all(m[i] == pytest.approx(3.0) for i in hs)


def test_cli_matmul_precision(water_pdb_factory, tiny_qk_checkpoint, tmp_path, capsys):
    """--matmul tf32 / bf16 reach the force as precision='tf32' / 'bf16' (float32 model); with --precision double
    it is a clear error."""
    from openmm_e2former import force as F

    pdb = water_pdb_factory(2)
    assert main([str(pdb), "--ml", "all", "--matmul", "bf16"] + _common(tmp_path, tiny_qk_checkpoint, steps=2)) == 0
    out = capsys.readouterr().out
    assert "final potential energy" in out
    # the run says what the ML force uses after the automatic choices (CPU: no radial tables by default)
    assert "e2former-md: ML force on cpu, bf16, radial tables off" in out
    assert any(k[0] == str(tiny_qk_checkpoint.resolve()) and k[4] == "bf16" for k in F._MODEL_CACHE)
    # --compile (experimental) reaches the force as createSystem(compile=True): a model of its own, set_compile on
    assert main([str(pdb), "--ml", "all", "--compile"] + _common(tmp_path, tiny_qk_checkpoint, steps=2)) == 0
    compiled = [m for k, m in F._MODEL_CACHE.items() if k[0] == str(tiny_qk_checkpoint.resolve()) and k[5]]
    assert compiled and all(m.compile_node_parts for m in compiled)
    # --radial-tables (experimental) likewise: createSystem(radial_tables=True)
    assert main([str(pdb), "--ml", "all", "--radial-tables"] + _common(tmp_path, tiny_qk_checkpoint, steps=2)) == 0
    assert "ML force on cpu, fp32, radial tables on" in capsys.readouterr().out
    tabled = [m for k, m in F._MODEL_CACHE.items() if k[0] == str(tiny_qk_checkpoint.resolve()) and k[6]]
    assert tabled and all(m.radial_tables for m in tabled)
    # --no-radial-tables reaches it as radial_tables=False; without either flag the CLI passes nothing (the
    # potential's automatic default: on for float32 on CUDA)
    from openmm_e2former.cli import build_parser
    for flags, want in (([], None), (["--no-radial-tables"], False), (["--radial-tables"], True)):
        assert build_parser().parse_args([str(pdb)] + flags).radial_tables is want
    # --cuda-graphs / --no-cuda-graphs reach createSystem as cuda_graphs=True / False; nothing without them
    for flags, want in (([], None), (["--no-cuda-graphs"], False), (["--cuda-graphs"], True)):
        assert build_parser().parse_args([str(pdb)] + flags).cuda_graphs is want
    handed = []
    real_force = F.create_python_force

    def spy(*a, **kw):
        handed.append(kw.get("cuda_graphs"))
        return real_force(*a, **kw)

    F.create_python_force = spy
    try:
        assert main([str(pdb), "--ml", "all", "--no-cuda-graphs"] + _common(tmp_path, tiny_qk_checkpoint, steps=2)) == 0
    finally:
        F.create_python_force = real_force
    assert handed == [False]
    err = _err([str(pdb), "--ml", "all", "--matmul", "tf32", "--precision", "double"]
               + _common(tmp_path, tiny_qk_checkpoint), capsys)
    assert "--matmul tf32 needs a float32 model" in err


def test_cli_minimisation_progress_bar(water_pdb_factory, tiny_qk_checkpoint, tmp_path, capsys):
    """Without --no-progress the energy minimisation shows a progress bar on stderr (L-BFGS iterations and the
    current energy; OpenMM 8.1+ minimisation reporters), as the MD does; the result is the same minimisation."""
    pdb = water_pdb_factory(2)
    args = [a for a in _common(tmp_path, tiny_qk_checkpoint, steps=2) if a != "--no-progress"]
    assert main([str(pdb), "--ml", "all"] + args) == 0
    captured = capsys.readouterr()
    assert "minimised potential energy" in captured.out
    assert "minimise" in captured.err and "kJ/mol" in captured.err and "MD" in captured.err
