"""openmm-e2former: E2Former-V2 equivariant ML potential for OpenMM.

The network (``model/``) and the GPU kernels (``kernels/``) live at the top of the
repository for readability, but are installed *inside* the ``openmm_e2former``
namespace (``openmm_e2former.model``, ``openmm_e2former.kernels``) so that nothing
called ``model`` or ``kernels`` ever lands in site-packages.
"""
from setuptools import setup

setup(
    name="openmm-e2former",
    version="0.1.0",
    description="E2Former-V2 equivariant transformer potential for OpenMM / openmm-ml",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=["openmm_e2former", "openmm_e2former.model", "openmm_e2former.kernels"],
    package_dir={
        "openmm_e2former": "openmm_e2former",
        "openmm_e2former.model": "model",
        "openmm_e2former.kernels": "kernels",
    },
    package_data={"openmm_e2former": ["data/*.json", "data/*.pt"], "openmm_e2former.model": ["*.json"]},
    install_requires=["numpy", "torch>=2.3", "pyyaml", "tqdm"],
    extras_require={
        "openmm": ["openmm>=8.2", "openmmml"],
        "analysis": ["mdtraj", "matplotlib"],
        "test": ["pytest", "pytest-xdist", "scipy", "pdbfixer", "ase", "h5py", "matscipy", "e3nn", "torch-geometric"],
        "gpu": ["triton"],
    },
    entry_points={
        "openmmml.potentials": [
            "e2formerv2 = openmm_e2former.potential:E2FormerV2PotentialImplFactory",
        ],
        "console_scripts": [
            "e2former-md = openmm_e2former.cli:main",
        ],
    },
)
