# source this on the device machine from the repo root: installs openmm wheels, maps the package, registers the entry point
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/openmm-*.whl .whl/openmm_cuda_13-*.whl || return 1
cp -r .whl/pylib/* /tmp/site/
mkdir -p /tmp/pkg/openmm_e2former /tmp/pkg/openmm_e2former-0.1.0.dist-info
cp -r openmm_e2former/* /tmp/pkg/openmm_e2former/
ln -sfn $PWD/model /tmp/pkg/openmm_e2former/model
ln -sfn $PWD/kernels /tmp/pkg/openmm_e2former/kernels
printf 'Metadata-Version: 2.1\nName: openmm-e2former\nVersion: 0.1.0\n' > /tmp/pkg/openmm_e2former-0.1.0.dist-info/METADATA
printf '[openmmml.potentials]\ne2formerv2 = openmm_e2former.potential:E2FormerV2PotentialImplFactory\n' > /tmp/pkg/openmm_e2former-0.1.0.dist-info/entry_points.txt
export PYTHONPATH=/tmp/pkg:/tmp/site E2F_FIXTURES=$PWD/.carry/shared/fixtures/official_parity PYTHONUNBUFFERED=1
