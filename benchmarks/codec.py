"""Audio conversion cost per second of audio: G.711 µ-law and 24 -> 8 kHz.

Every streamed call converts in both directions in the daemon's own
process, so this is CPU per call per second of speech. The baseline,
measured in the same run, is the codec's own per-sample reference
(``mulaw.encode_sample``/``decode_sample``, the definition the tables are
built from and tested against); the ratio says what the table-driven C
loops buy. The decimator's reference is the direct-form float FIR
(``resample.decimate_reference``), which its big-integer polyphase form
replaces. Best of several repeats, since the machine is
shared. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import array
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voicecalld.media import mulaw  # noqa: E402
from voicecalld.media.resample import Decimator, decimate_reference  # noqa: E402
from voicecalld.testing._audio_signals import speech_like_pcm  # noqa: E402


def best_of(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    pcm8k = speech_like_pcm(1.0, 8000)
    samples = array.array("h", pcm8k)
    if sys.byteorder == "big":
        samples.byteswap()
    codes = mulaw.encode(pcm8k)
    pcm24k = speech_like_pcm(1.0, 24000)

    # The fast paths must agree with the references they are measured against.
    assert codes == bytes(mulaw.encode_sample(s) for s in samples)
    assert array.array("h", mulaw.decode(codes)).tolist() == [mulaw.decode_sample(c) for c in codes]

    rows = []
    for name, fast, reference in [
        ("mulaw encode", lambda: mulaw.encode(pcm8k), lambda: bytes(mulaw.encode_sample(s) for s in samples)),
        ("mulaw decode", lambda: mulaw.decode(codes), lambda: [mulaw.decode_sample(c) for c in codes]),
    ]:
        t_fast = best_of(fast, args.repeats)
        t_ref = best_of(reference, args.repeats)
        rows.append({"workload": name, "ms_per_audio_second": t_fast * 1e3,
                     "reference_ms": t_ref * 1e3, "reference_over_fast": t_ref / t_fast})
    t_dec = best_of(lambda: Decimator().process(pcm24k), args.repeats)
    t_dec_ref = best_of(lambda: decimate_reference(pcm24k), args.repeats)
    rows.append({"workload": "24k->8k decimate", "ms_per_audio_second": t_dec * 1e3,
                 "reference_ms": t_dec_ref * 1e3, "reference_over_fast": t_dec_ref / t_dec})

    print(f"{'workload':<20}{'ms / s audio':>14}{'reference ms':>14}{'ref/fast':>10}{'% of real time':>16}")
    for r in rows:
        ref = f"{'-':>14}{'-':>10}"
        if r["reference_ms"] is not None:
            ref = f"{r['reference_ms']:>14.2f}{r['reference_over_fast']:>10.1f}"
        print(f"{r['workload']:<20}{r['ms_per_audio_second']:>14.3f}{ref}{r['ms_per_audio_second'] / 10:>16.3f}")
    print(json.dumps({"benchmark": "codec", "repeats": args.repeats,
                      "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                               for r in rows]}))


if __name__ == "__main__":
    main()
