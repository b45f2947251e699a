# Sourced by the call scripts here (it stops the call when the wheels do not install: call EE's
# first try ran every job against a missing gin after a cp311 wheel was refused), from the repository root on the device: installs the
# carried wheels into /tmp/site, unpacks this commit (.gpu/head.tar.gz) into /tmp/new and, when
# carried, the "before" tree (.gpu/old.tar.gz) into /tmp/old, copies the data to /tmp/shared/data
# (what ../shared/data is beside a checkout), and prints the commit, the card and the time.
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl \
  || { echo "setup: the wheels did not install (one built for another Python?): stopping"; exit 1; }
PYTHONPATH=/tmp/site python3 -c "import gin; gin.configurable" \
  || { echo "setup: gin-config does not import from /tmp/site: stopping"; exit 1; }
mkdir -p /tmp/new /tmp/shared /tmp/res && tar -xzf .gpu/head.tar.gz -C /tmp/new
# W: where a call script writes its logs and results: under $OUT, so they come back even when
# the call runs past its limit (the scripts before call FF set W=/tmp/res and tarred it at the end)
export W="${OUT:-/tmp}/res" && mkdir -p "$W"
if [ -f .gpu/old.tar.gz ]; then mkdir -p /tmp/old && tar -xzf .gpu/old.tar.gz -C /tmp/old; fi
cp -r .gpu/shared_data /tmp/shared/data
echo "commit $(cat .gpu/HEAD)"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u
