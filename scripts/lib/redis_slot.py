"""Redis Cluster's key hashing, for the scripts that compute slots (the
benchmark's per-node routing, the chart checks' shard table): the same rule
as services/core/src/stream/shards.rs, which a Rust test holds to Redis's."""

SLOTS = 16384


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), Redis Cluster's key hash."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """The hash slot of a key: of its hash tag (between the first `{` and the
    next `}`, if not empty), else of the whole key."""
    raw = key.encode()
    start = raw.find(b"{")
    if start >= 0:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1:end]
    return crc16(raw) % SLOTS
