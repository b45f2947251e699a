set -u
# Call F: the tied table's CUDA backward through embedding_dense_backward (this commit, "new")
# against call D's code (e054538, "mid": index_put_ accumulate), bench_epoch graph, flash_ce,
# beauty-like and ml20m-like (A then B: earlier ABAB runs agreed within 0.01 s); then test_tied_table's GPU tests and test_graph_step's.
. experiments/bench/device/setup.sh
mkdir -p /tmp/mid && tar -xzf .gpu/mid.tar.gz -C /tmp/mid
( sleep 200; pkill -f "bench_epoch|pytest" ) > /dev/null 2>&1 &
C="dataset.cache_dir = '/tmp/cache'"
G=(--gin gin/ml20m_like_flash_ce.gin --gin gin/beauty_like_flash_ce.gin --gin_bindings "$C" --epochs 1 --warmup-steps 40 --sample-steps 20 --variants graph --budget-s 60)
for t in mid new; do (cd /tmp/$t && PYTHONPATH=/tmp/site:/tmp/$t timeout 70 python experiments/bench/bench_epoch.py "${G[@]}" --out /tmp/res/e_$t > /tmp/res/e_$t.log 2>&1; echo "$t rc $? $(date -u +%T)"; grep "^| [bm]" /tmp/res/e_$t.log | cut -d'|' -f2-6,10); done
cd /tmp/new && PYTHONPATH=/tmp/site:/tmp/new timeout 90 python -m pytest -m gpu -p no:cacheprovider -q -rfE tests/test_tied_table.py tests/test_graph_step.py > /tmp/res/pytest_f.log 2>&1; echo "pytest rc $?"; tail -4 /tmp/res/pytest_f.log
