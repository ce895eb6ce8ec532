#!/usr/bin/env python3
"""Independent cross-check of mxep's quant/ codecs against ml_dtypes (issue 3).

Every code point of every format, and about a million float32 inputs per
encoder (random bit patterns, normals around each format's range, FP32
subnormals, exact ties between neighbouring codes and their FP32 neighbours,
huge values, +-0, +-Inf, NaN), are converted by mxep (through xcheck_dump) and
by ml_dtypes / numpy, and compared bit for bit.

Where the two define different rules, this script says so and compares the part
where the rules agree:

  float4_e2m1fn   ml_dtypes saturates at +-6 like mxep, so every non-NaN input
                  is compared. NaN is excluded: E2M1 has no NaN; ml_dtypes'
                  result for NaN is not meaningful (it gave -0 for +NaN), mxep
                  defines a zero carrying the NaN's sign.
  float8_e4m3fn   ml_dtypes' cast turns overflow (|x| >= 464 after rounding,
                  and +-Inf) into NaN; mxep's quantizer saturates at +-448
                  (FORMATS.md). Compared: mxep(x) == ml_dtypes(clip(x, -448,
                  448)) for every non-NaN x, which is exactly "RNE, then
                  saturate"; NaN -> 0x7F / 0xFF compared directly.
  float8_e4m3fnuz same, with +-240; NaN -> 0x80 compared directly. Decoding
                  0x80: ml_dtypes gives -NaN (0xFFC00000), mxep +NaN
                  (0x7FC00000); compared as NaN only.
  float8_e5m2     mxep saturate=0 is the IEEE cast: compared directly on every
                  input, Inf and NaN included. saturate=1 is compared as
                  ml_dtypes(clip(x, -57344, 57344)).
  float8_e8m0fnu  decode only, every byte. ml_dtypes' float -> e8m0 cast rounds
                  to nearest; mxep defines no such cast, only the four MXFP4
                  scale rules. Where a rule's answer is an exact power of two
                  the rounding cannot matter, so: floor(4 * 2^n) and even(4 *
                  2^n) == e8m0(2^n); rceil(6 * 2^n) and round_up(6 * 2^n) ==
                  e8m0(2^n) for n in [-127, 125] (round_up only where 6 * 2^n / 6
                  is an FP32 normal: below that it follows triton's FP32
                  quotient).
  bfloat16        every input compared; NaN inputs give the canonical quiet NaN
                  with the input's sign in both (0x7FC0 / 0xFFC0).
  float16         every non-NaN input compared bit for bit. NaN inputs are
                  compared as NaN with the input's sign: numpy keeps payload
                  bits (even a signalling NaN), mxep writes 0x7E00 / 0xFE00.
                  Decoding a NaN code: numpy keeps a signalling NaN signalling,
                  mxep quiets it: compared as NaN with the sign.

Exit status 0 when everything compared agrees, 1 on any mismatch (the first
few are printed), 2 on setup errors. Prints one JSON summary line at the end.
"""
import argparse
import json
import os
import subprocess
import sys
import time

try:
    import numpy as np
    import ml_dtypes as md
except ImportError as e:  # a failure, never a skip
    print(f"xcheck_ml_dtypes: cannot import {e.name}: run scripts/setup.sh to create the venv "
          f"with numpy and ml_dtypes ({sys.executable})", file=sys.stderr)
    sys.exit(2)

SEED = 20261123
N_RANDOM = 1_000_000


def f32(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def bits32(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


class Dump:
    def __init__(self, exe, workdir):
        self.exe, self.workdir = exe, workdir
        os.makedirs(workdir, exist_ok=True)

    def run(self, fmt, direction, data):
        src = os.path.join(self.workdir, f"{fmt}.{direction}.in")
        dst = os.path.join(self.workdir, f"{fmt}.{direction}.out")
        data.tofile(src)
        r = subprocess.run([self.exe, fmt, direction, src, dst], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"xcheck_ml_dtypes: {self.exe} {fmt} {direction} failed: {r.stderr.strip()}", file=sys.stderr)
            sys.exit(2)
        return np.fromfile(dst, dtype=np.uint8)

    def encode(self, fmt, x, code_bytes):
        out = self.run(fmt, "encode", np.ascontiguousarray(x, dtype=np.float32))
        return out.view(np.uint16) if code_bytes == 2 else out

    def decode(self, fmt, codes):
        return self.run(fmt, "decode", np.ascontiguousarray(codes)).view(np.uint32)


# ---------------------------------------------------------------- inputs

def format_values(dtype, nbits):
    """All finite values of a format, via ml_dtypes (the reference)."""
    codes = np.arange(1 << nbits, dtype=np.uint8 if nbits <= 8 else np.uint16)
    if nbits == 4:
        v = codes.view(dtype)  # ml_dtypes stores float4 one per byte
    else:
        v = codes.view(dtype)
    with np.errstate(invalid="ignore"):
        f = v.astype(np.float32)
    return np.unique(f[np.isfinite(f)])


def tie_inputs(values):
    """Exact midpoints between neighbouring values and their FP32 neighbours."""
    v = np.unique(np.abs(values))
    mids = (v[:-1].astype(np.float64) + v[1:].astype(np.float64)) / 2
    m = mids.astype(np.float32)
    assert np.all(m.astype(np.float64) == mids), "midpoint not exact in FP32"
    up = np.nextafter(m, np.float32(np.inf))
    down = np.nextafter(m, np.float32(0))
    top = np.float32(v[-1] + (v[-1] - v[-2]) / 2)  # overflow tie above the largest finite value
    m = np.append(m, top)
    up = np.append(up, np.nextafter(top, np.float32(np.inf)))
    down = np.append(down, np.nextafter(top, np.float32(0)))
    around = np.concatenate([v, m, up, down, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(0))])
    return np.concatenate([around, -around]).astype(np.float32)


def random_inputs(rng, emin, emax, n):
    """n float32 inputs: a quarter random bit patterns, half normals with
    exponents from emin - 4 to emax + 2, FP32 subnormals, huge values and the
    specials."""
    parts = []
    parts.append(rng.integers(0, 1 << 32, size=n // 4, dtype=np.uint64).astype(np.uint32))
    k = n // 2
    e = rng.integers(emin - 4, emax + 3, size=k) + 127
    e = np.clip(e, 1, 254).astype(np.uint32)
    mant = rng.integers(0, 1 << 23, size=k, dtype=np.uint32)
    sign = rng.integers(0, 2, size=k, dtype=np.uint32) << 31
    parts.append(sign | (e << 23) | mant)
    k = n // 8
    parts.append((rng.integers(0, 2, size=k, dtype=np.uint32) << 31) | rng.integers(1, 1 << 23, size=k, dtype=np.uint32))
    k = n - sum(len(p) for p in parts) - 16
    big = (rng.integers(max(emax, -126) + 127, 255, size=k).astype(np.uint32) << 23) | rng.integers(0, 1 << 23, size=k, dtype=np.uint32)
    parts.append(big | (rng.integers(0, 2, size=k, dtype=np.uint32) << 31))
    specials = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF,
                0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x80000001, 0x00800000, 0x80800000, 0x007FFFFF, 0x807FFFFF]
    parts.append(np.array(specials, dtype=np.uint32))
    return f32(np.concatenate(parts))


# ---------------------------------------------------------------- comparison

class Report:
    def __init__(self):
        self.rows = []
        self.failed = False

    def check(self, name, ok_mask, x, ours, theirs, compared, note=""):
        bad = np.flatnonzero(~ok_mask)
        self.rows.append({"check": name, "compared": int(compared), "mismatches": int(len(bad)), "note": note})
        status = "ok " if len(bad) == 0 else "FAIL"
        print(f"  {status} {name}: {compared} compared, {len(bad)} mismatches{(' (' + note + ')') if note else ''}")
        if len(bad):
            self.failed = True
            for i in bad[:8]:
                xi = x[i]
                xs = hex(int(np.asarray(xi).view(np.uint32))) if np.asarray(xi).dtype == np.float32 else hex(int(xi))
                print(f"       input {xs} ({np.asarray(xi).item()!r}): mxep {hex(int(ours[i]))}, reference {hex(int(theirs[i]))}")


def nan_sign_equal(a_bits, b_bits):
    """Both float32 patterns NaN with the same sign."""
    a, b = f32(a_bits), f32(b_bits)
    return np.isnan(a) & np.isnan(b) & ((a_bits >> 31) == (b_bits >> 31))


def decode_all(rep, dump, fmt, dtype, nbits, nan_rule):
    codes = np.arange(1 << nbits, dtype=np.uint16 if nbits > 8 else np.uint8)
    ours = dump.decode(fmt, codes.view(np.uint8) if nbits > 8 else codes)
    with np.errstate(invalid="ignore"):
        theirs = bits32(codes.view(dtype).astype(np.float32))
    isnan = np.isnan(f32(theirs))
    if nan_rule == "bits":
        ok = ours == theirs
    elif nan_rule == "sign":
        ok = np.where(isnan, nan_sign_equal(ours, theirs), ours == theirs)
    else:  # "nan": NaN-ness only
        ok = np.where(isnan, np.isnan(f32(ours)), ours == theirs)
    rep.check(f"{fmt} decode, every code point", ok, codes, ours, theirs, len(codes),
              "" if nan_rule == "bits" else f"NaN codes compared as NaN ({nan_rule})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dump", required=True, help="path of the xcheck_dump program")
    ap.add_argument("--workdir", required=True, help="folder for the exchanged binary files")
    ap.add_argument("--count", type=int, default=N_RANDOM, help=f"random inputs per format (default {N_RANDOM})")
    args = ap.parse_args()
    if not os.access(args.dump, os.X_OK):
        print(f"xcheck_ml_dtypes: {args.dump} is not an executable (build the xcheck_dump target)", file=sys.stderr)
        return 2
    t0 = time.time()
    dump = Dump(args.dump, args.workdir)
    rng = np.random.default_rng(SEED)
    rep = Report()
    print(f"xcheck_ml_dtypes: seed {SEED}, {args.count} random inputs per format, ml_dtypes {md.__version__}, "
          f"numpy {np.__version__}")

    # ---- decoders: every code point
    decode_all(rep, dump, "e2m1", md.float4_e2m1fn, 4, "bits")
    decode_all(rep, dump, "e8m0", md.float8_e8m0fnu, 8, "bits")
    decode_all(rep, dump, "e4m3fn", md.float8_e4m3fn, 8, "bits")
    decode_all(rep, dump, "e4m3fnuz", md.float8_e4m3fnuz, 8, "nan")
    decode_all(rep, dump, "e5m2", md.float8_e5m2, 8, "bits")
    decode_all(rep, dump, "bf16", md.bfloat16, 16, "bits")
    decode_all(rep, dump, "f16", np.float16, 16, "sign")

    # ---- encoders
    # (fmt, reference dtype, code bytes, emin, emax, clip, nbits)
    specs = [
        ("e2m1", md.float4_e2m1fn, 1, 0, 2, 6.0, 4),
        ("e4m3fn", md.float8_e4m3fn, 1, -6, 8, 448.0, 8),
        ("e4m3fnuz", md.float8_e4m3fnuz, 1, -7, 7, 240.0, 8),
        ("e5m2", md.float8_e5m2, 1, -14, 15, None, 8),
        ("e5m2sat", md.float8_e5m2, 1, -14, 15, 57344.0, 8),
        ("bf16", md.bfloat16, 2, -126, 127, None, 16),
        ("f16", np.float16, 2, -14, 15, None, 16),
    ]
    for fmt, dtype, cb, emin, emax, clip, nbits in specs:
        vals = format_values(dtype, min(nbits, 16))
        if nbits == 16:  # ties between random neighbours, not all 65536 pairs twice
            pick = rng.choice(len(vals) - 1, size=20000, replace=False)
            vals = np.unique(np.concatenate([vals[pick], vals[pick + 1]]))
        x = np.concatenate([tie_inputs(vals), random_inputs(rng, emin, emax, args.count)])
        ours = dump.encode(fmt, x, cb).astype(np.uint32)
        xnan = np.isnan(x)
        with np.errstate(invalid="ignore", over="ignore"):
            xr = np.clip(x, -clip, clip) if clip is not None else x
            theirs = xr.astype(dtype).view(np.uint16 if cb == 2 else np.uint8).astype(np.uint32)
        if fmt == "e2m1":
            ok = np.where(xnan, True, ours == theirs)
            rep.check(f"{fmt} encode", ok, x, ours, theirs, int((~xnan).sum()),
                      "NaN inputs excluded (no NaN code); ml_dtypes saturates at +-6 like mxep")
            nan_ok = ours[xnan] == ((bits32(x[xnan]) >> 31) << 3)
            rep.check(f"{fmt} encode NaN -> signed zero (mxep rule, no reference)", nan_ok, x[xnan], ours[xnan],
                      (bits32(x[xnan]) >> 31) << 3, int(xnan.sum()))
        elif fmt == "f16":
            ok = np.where(xnan, (ours & 0x7FFF) == 0x7E00, ours == theirs)
            ok &= np.where(xnan, (ours >> 15) == (theirs >> 15), True)
            rep.check(f"{fmt} encode", ok, x, ours, theirs, len(x),
                      "NaN compared as NaN with sign: numpy keeps payload bits, mxep writes 0x7E00")
        else:
            ok = ours == theirs
            note = ""
            if clip is not None and fmt != "e5m2sat":
                note = f"reference = ml_dtypes(clip(x, +-{clip:g})): ml_dtypes' own cast gives NaN on overflow"
            elif fmt == "e5m2sat":
                note = "reference = ml_dtypes(clip(x, +-57344))"
            rep.check(f"{fmt} encode", ok, x, ours, theirs, len(x), note)
            if clip is not None and fmt in ("e4m3fn", "e4m3fnuz"):
                with np.errstate(invalid="ignore", over="ignore"):
                    raw = x.astype(dtype).view(np.uint8).astype(np.uint32)
                differ = int(((raw != theirs) & ~xnan).sum())
                print(f"       ({differ} overflowing inputs where ml_dtypes' plain cast gives NaN and mxep saturates)")

    # ---- E8M0 through the scale rules, where a rule's answer is an exact power of two
    n = np.arange(-127, 126)
    p2 = np.ldexp(np.float64(1), n).astype(np.float32)
    ref = p2.astype(md.float8_e8m0fnu).view(np.uint8).astype(np.uint32)
    assert np.all(ref == (n + 127)), "ml_dtypes e8m0 of a power of two"
    four = np.ldexp(np.float64(4), n)
    six = np.ldexp(np.float64(6), n)
    for rule, amax, mask in [("floor", four, np.ones_like(n, bool)), ("even", four, np.ones_like(n, bool)),
                             ("rceil", six, np.ones_like(n, bool)), ("round_up", six, n >= -126)]:
        a = amax.astype(np.float32)
        exact = a.astype(np.float64) == amax  # 4 * 2^n and 6 * 2^n must be exact in FP32
        m = mask & exact
        ours = dump.encode(f"scale_{rule}", a[m], 1).astype(np.uint32)
        rep.check(f"e8m0 via scale rule {rule} on {'4' if rule in ('floor', 'even') else '6'} * 2^n", ours == ref[m],
                  a[m], ours, ref[m], int(m.sum()), "ml_dtypes e8m0 cast of 2^n")

    dt = time.time() - t0
    total = sum(r["compared"] for r in rep.rows)
    bad = sum(r["mismatches"] for r in rep.rows)
    print(json.dumps({"test": "xcheck_ml_dtypes", "ok": not rep.failed, "seed": SEED, "compared": total,
                      "mismatches": bad, "seconds": round(dt, 2), "ml_dtypes": md.__version__, "checks": rep.rows}))
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
