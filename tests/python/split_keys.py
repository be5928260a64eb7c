"""What llama-gguf-split --merge makes of an unsplit file's bytes (no pytest needed: scripts
import it too)."""
import struct


def with_split_keys(unsplit: bytes, shard_plan: str | None = None) -> bytes:
    """`unsplit` as llama-gguf-split --merge writes a merge of its split set: the first file's
    keys, so the same metadata followed by split.no = 0, split.tensors.count = N and
    split.count = 0 (which it zeroes so the merge is not taken for a split), the header
    re-padded to 32 bytes; tensor infos and data unchanged. `shard_plan`: the set was sharded
    (smelt --shard/--shards), its first file holding `smelt.shard_plan` before the split keys."""
    n_tensors, n_kv = struct.unpack_from("<QQ", unsplit, 8)
    pos = 24

    def skip_string(p):
        (n,) = struct.unpack_from("<Q", unsplit, p)
        return p + 8 + n

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_value(p, ty):
        if ty == 8:
            return skip_string(p)
        if ty == 9:
            elem, n = struct.unpack_from("<IQ", unsplit, p)
            p += 12
            for _ in range(n):
                p = skip_value(p, elem)
            return p
        return p + sizes[ty]

    for _ in range(n_kv):
        pos = skip_string(pos)
        (ty,) = struct.unpack_from("<I", unsplit, pos)
        pos = skip_value(pos + 4, ty)
    kv_end = pos
    for _ in range(n_tensors):
        pos = skip_string(pos)
        (n_dims,) = struct.unpack_from("<I", unsplit, pos)
        pos += 4 + 8 * n_dims + 4 + 8
    infos_end = pos
    data_start = -(-infos_end // 32) * 32

    def kv(key, ty, fmt, value):
        k = key.encode()
        return struct.pack("<Q", len(k)) + k + struct.pack("<I", ty) + struct.pack(fmt, value)

    extra = b""
    if shard_plan is not None:
        k, v = b"smelt.shard_plan", shard_plan.encode()
        extra += struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(v)) + v
    extra += kv("split.no", 2, "<H", 0) + kv("split.tensors.count", 5, "<i", n_tensors) + kv("split.count", 2, "<H", 0)
    head = (unsplit[:16] + struct.pack("<Q", n_kv + 3 + (shard_plan is not None)) + unsplit[24:kv_end] + extra
            + unsplit[kv_end:infos_end])
    return head + bytes(-len(head) % 32) + unsplit[data_start:]
