#!/usr/bin/env bash
# mxckpt command line: --help, make, inspect (text and --json), and its errors.
# usage: test_mxckpt_cli.sh MXCKPT
set -u
mx="$1"
. "$(dirname "$0")/../cli_check.sh"

check help 0 "$mx" --help
has help "mxckpt make --preset NAME --layers N --seed S --out DIR"
has help "gpt-oss-20b"
has help "deepseek-fp8"
check no-args 2 "$mx"
check unknown-command 2 "$mx" frobnicate
has unknown-command "unknown command 'frobnicate'"
check make-missing-flags 2 "$mx" make --preset tiny
has make-missing-flags "required"
check make-bad-layers 2 "$mx" make --preset tiny --layers x --seed 1 --out "$tmp/a"
has make-bad-layers "--layers 'x'"
check make-unknown-option 2 "$mx" make --preset tiny --layers 1 --seed 1 --out "$tmp/a" --bogus
has make-unknown-option "unknown option '--bogus'"
check make-experts-range 2 "$mx" make --preset tiny --layers 1 --seed 1 --out "$tmp/a" --experts 2000000
has make-experts-range "expected 1 .. 1048576"
check make-empty-out 2 "$mx" make --preset tiny --layers 1 --seed 1 --out ''
has make-empty-out "--out '': expected a directory path"
check make-leading-zero-is-decimal 0 "$mx" make --preset tiny --layers 010 --seed 1 --out "$tmp/z10"
[ -f "$tmp/z10/config.json" ] && grep -qE '"num_hidden_layers":[[:space:]]*10,' "$tmp/z10/config.json" ||
  { echo "FAIL make-leading-zero-is-decimal: not 10 layers"; fails=$((fails + 1)); }
rm -rf "$tmp/z10"
check fuzz-seeds-help 0 "$mx" fuzz-seeds --help
[ ! -e ./--help ] || { echo "FAIL fuzz-seeds-help wrote ./--help"; fails=$((fails + 1)); }
check make-bad-preset 1 "$mx" make --preset gpt-oss-7b --layers 1 --seed 1 --out "$tmp/a"
has make-bad-preset "gpt-oss-7b"
[ ! -e "$tmp/a" ] || { echo "FAIL make-bad-preset left $tmp/a"; fails=$((fails + 1)); }
check make-tiny 0 "$mx" make --preset tiny --layers 2 --seed 5 --out "$tmp/tiny" --shard-bytes 60000
has make-tiny "wrote"
[ -f "$tmp/tiny/model.safetensors.index.json" ] || { echo "FAIL make-tiny: not sharded"; fails=$((fails + 1)); }
check make-exists 1 "$mx" make --preset tiny --layers 1 --seed 5 --out "$tmp/tiny"
has make-exists "already exists"
ls "$tmp" | grep -q tmp- && { echo "FAIL make-exists left a temporary directory"; fails=$((fails + 1)); }
check inspect-text 0 "$mx" inspect "$tmp/tiny"
has inspect-text "gpt_oss_fused"
has inspect-text "gpt_oss_mxfp4 -> scheme W4A16"
has inspect-text "warnings       none"
check inspect-json 0 "$mx" inspect "$tmp/tiny" --json
has inspect-json '"layout":	"gpt_oss_fused"'
has inspect-json '"experts":	8'
has inspect-json '"ok":	true'
check make-deepseek-small 0 "$mx" make --preset deepseek-fp8 --layers 1 --seed 2 --experts 2 --out "$tmp/ds"
check inspect-deepseek 0 "$mx" inspect "$tmp/ds" --json
has inspect-deepseek '"kind":	"sigmoid_grouped"'
has inspect-deepseek '"weight_scales":	"block_128x128"'
# --all loads every expert: a NaN scale of a middle expert (not the first or last, which inspect loads anyway)
check make-qwen3-small 0 "$mx" make --preset qwen3-moe-fp8 --layers 1 --seed 3 --experts 3 --out "$tmp/q"
check inspect-all-good 0 "$mx" inspect "$tmp/q" --all
has inspect-all-good "every expert tried"
has inspect-all-good "warnings       none"
python3 - "$tmp/q/model.safetensors" <<'PY'
import json, struct, sys
with open(sys.argv[1], "r+b") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    t = json.loads(f.read(n))["model.layers.0.mlp.experts.1.down_proj.weight_scale"]
    assert t["dtype"] == "F32", t
    f.seek(8 + n + t["data_offsets"][0] + 4 * 2)
    f.write(struct.pack("<f", float("nan")))
PY
check inspect-middle-expert-unseen 0 "$mx" inspect "$tmp/q"
has inspect-middle-expert-unseen "--all for every one"
check inspect-all-bad 1 "$mx" inspect "$tmp/q" --all
has inspect-all-bad "1 experts cannot be loaded; first: layer 0 expert 1:"
has inspect-all-bad "'model.layers.0.mlp.experts.1.down_proj.weight_scale' value 2 is nan, expected a finite scale >= 0"
check inspect-all-bad-json 1 "$mx" inspect "$tmp/q" --all --json
has inspect-all-bad-json '"experts_not_loadable":	1'
has inspect-all-bad-json '"ok":	false'
# activation scales per 16 group (compressed-tensors): said "per 128 group" with no warning; no backend takes them
mkdir -p "$tmp/g16"
ln -s "$tmp/q/model.safetensors" "$tmp/g16/model.safetensors"
python3 - "$tmp/q/config.json" "$tmp/g16/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["quantization_config"] = {"quant_method": "compressed-tensors", "config_groups": {"g": {
    "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
    "input_activations": {"num_bits": 8, "type": "float", "strategy": "group", "group_size": 16, "dynamic": True}}}}
json.dump(c, open(sys.argv[2], "w"))
PY
check inspect-act-group-16 0 "$mx" inspect "$tmp/g16"
has inspect-act-group-16 "activation scales per 16 group"
has inspect-act-group-16 "warning        activation scales per 16 group: the backends take per-token or per-128-group scales only"
# a broken checkpoint: truncated shard
head -c 100 "$tmp/tiny/model-00001-of-00004.safetensors" >"$tmp/cut" 2>/dev/null || head -c 100 "$(ls "$tmp"/tiny/*.safetensors | head -1)" >"$tmp/cut"
cp "$tmp/cut" "$(ls "$tmp"/tiny/*.safetensors | head -1)"
check inspect-broken 1 "$mx" inspect "$tmp/tiny"
has inspect-broken "MX_ERR_FORMAT"
check inspect-broken-json 1 "$mx" inspect "$tmp/tiny" --json
has inspect-broken-json '"ok":	false'
check inspect-missing 1 "$mx" inspect "$tmp/none"
has inspect-missing "not a checkpoint directory"

# SIGTERM while writing: the write stops, nothing is left (not even DIR.tmp-PID), the
# signal is the exit status
"$mx" make --preset gpt-oss-20b --layers 4 --seed 1 --out "$tmp/big" 2>"$tmp/big.err" &
pid=$!
for _ in $(seq 600); do grep -q "writing" "$tmp/big.err" 2>/dev/null && break; sleep 0.1; done
kill -TERM "$pid"
wait "$pid"
rc=$?
if [ "$rc" -ne 143 ] || ls -d "$tmp"/big.tmp-* "$tmp/big" >/dev/null 2>&1 || ! grep -q "stopped, nothing written" "$tmp/big.err"; then
  echo "FAIL make-sigterm: exit $rc (expected 143), left: $(ls -d "$tmp"/big* 2>/dev/null | tr '\n' ' ')"
  cat "$tmp/big.err"; fails=$((fails + 1))
else
  echo "ok   make-sigterm"
fi

cli_done
