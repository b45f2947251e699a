set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site
[ -d /tmp/new ] || . experiments/bench/device/setup.sh
mkdir -p /tmp/mid && tar -xzf .gpu/mid.tar.gz -C /tmp/mid
E=(--preset beauty-like --cache-dir /tmp/cache --path streaming --scorers model --splits test --chunk-size 65536)
for t in mid new mid new; do (cd /tmp/$t && PYTHONPATH=/tmp/site:/tmp/$t timeout 45 python experiments/bench/bench_eval.py "${E[@]}" --out /tmp/res/d_$t > /tmp/res/d_$t.log 2>&1; echo "$t rc $?"; grep "^| beauty" /tmp/res/d_$t.log | cut -d'|' -f9-18); done
