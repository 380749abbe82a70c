# Sourced by benchmarks/gpu_v15.sh and gpu_quick.sh (needs $OUT).
# stages DIR LIMIT ARGS...: benchmarks/attention_stages.py ARGS with its JSONL under $OUT/DIR and a time limit of LIMIT
# seconds; prints the last measurement line, then the markdown table of everything DIR holds
stages() {
  local dir=$1 limit=$2; shift 2
  timeout "$limit" python3 benchmarks/attention_stages.py --out "$OUT/$dir" "$@" 2>&1 | grep -E '^\{|Error' \
      | cut -c1-200 | tail -n 1
  [ -f "$OUT/$dir/attention_stages.jsonl" ] && python3 benchmarks/attention_stages.py \
      --report "$OUT/$dir/attention_stages.jsonl"
}
