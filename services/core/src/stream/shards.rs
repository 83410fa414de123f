//! Sharded streams: one logical stream as N Redis keys.
//!
//! One stream key lives on one Redis primary, so one core serves every
//! `XADD`, `XREADGROUP` and `XACK` and one node's memory holds the backlog.
//! With `ROWPIPE_STREAM_SHARDS=N` (N > 1) the stream is N keys, each with a
//! hash tag of its own, so that on a Redis Cluster they lie on different
//! primaries; each key has its own consumer group (same name).
//!
//! * **Key names.** Shard `i` of `N` is `<stream>:{<tag>}`. The tag is
//!   chosen so the key's hash slot falls in the `i`-th of `N` equal parts
//!   of the 16,384 slots: a cluster made by `redis-cli --cluster create`
//!   splits the slots into equal ranges, so shards spread over its
//!   primaries as evenly as N allows. With one shard the key is the stream
//!   name itself, as it always was. The chart needs the same names for its
//!   KEDA triggers and cannot compute CRC16, so it reads them from a table
//!   this module prints (`rowpipe shards --table`), and a test holds the two
//!   equal.
//! * **Routing.** A row goes to the shard of a hash (FNV-1a, stable across
//!   processes and versions) of its **normalized** email, so all rows of one
//!   address meet in one shard; a row whose email cannot be normalized goes
//!   to shard 0 ([`Shards::for_email`]).
//! * **Which shards a consumer serves**: all by default, or a set
//!   (`ROWPIPE_SHARDS=0,3-5`, [`ShardSet`]).

use std::fmt;

use crate::validate::{EmailPolicy, normalize_email};

/// The 16,384 hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The most shards a stream may have (the chart's table goes this far).
pub const MAX_SHARDS: u16 = 64;

/// The shards of one logical stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shards {
    stream: String,
    keys: Vec<String>,
}

impl Shards {
    /// The `count` keys of `stream` (`count` in `1..=MAX_SHARDS`).
    pub fn new(stream: &str, count: u16) -> Self {
        let keys = if count <= 1 {
            vec![stream.to_string()]
        } else {
            (0..count)
                .map(|i| format!("{stream}:{{{}}}", tag(i, count)))
                .collect()
        };
        Self {
            stream: stream.to_string(),
            keys,
        }
    }

    /// The logical stream's name (`ROWPIPE_STREAM`), which metrics carry as
    /// their `stream` label beside the `shard` index.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// How many shards.
    pub fn count(&self) -> usize {
        self.keys.len()
    }

    /// The key of shard `index` (below [`Self::count`]: the indexes come
    /// from [`Self::for_email`] and [`ShardSet::resolve`]).
    pub fn key(&self, index: usize) -> &str {
        &self.keys[index]
    }

    /// Every key, in shard order.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// The shard of a row whose email normalized to `normalized`, or shard
    /// 0 for a row whose email could not be normalized.
    pub fn for_email(&self, normalized: Option<&str>) -> usize {
        match normalized {
            Some(key) if self.keys.len() > 1 => {
                (fnv1a(key.as_bytes()) % self.keys.len() as u64) as usize
            }
            _ => 0,
        }
    }

    /// The shard of a row whose email field is `raw` (`None`: no email, or
    /// a row rejected at intake). It is normalized under the most lenient
    /// policy, so every address any consumer policy accepts gets its own
    /// uniqueness key's shard (the policy only decides acceptance, not the
    /// key); what even that policy refuses goes to shard 0.
    pub fn for_raw_email(&self, raw: Option<&str>) -> usize {
        if self.keys.len() <= 1 {
            return 0;
        }
        const LENIENT: EmailPolicy = EmailPolicy {
            allow_ip_literal: true,
            allow_quoted_local_part: true,
        };
        let normalized = raw.and_then(|raw| normalize_email(raw, LENIENT));
        self.for_email(normalized.as_deref())
    }
}

/// The hash tag of shard `index` of `count`: the first of `0`, `1`, … `z`,
/// `10`, … (base 36, after the shard's index and a dash) whose slot lies in
/// the middle half of the shard's part of the slots. The middle, because
/// clusters split the slots into parts that differ from an exact division
/// by a slot here and there (`redis-cli --cluster create` rounds): a slot
/// at the edge of the part could land on the neighbouring primary.
pub fn tag(index: u16, count: u16) -> String {
    let count = count.max(1) as u32;
    let start = index as u32 * SLOTS as u32 / count;
    let end = (index as u32 + 1) * SLOTS as u32 / count;
    let quarter = (end - start) / 4;
    let (low, high) = ((start + quarter) as u16, (end - quarter) as u16);
    let mut n: u32 = 0;
    loop {
        let candidate = format!("{index}-{}", base36(n));
        let slot = slot(candidate.as_bytes());
        if (low..high).contains(&slot) {
            return candidate;
        }
        n += 1;
    }
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// The hash slot of `key`, as Redis Cluster computes it: CRC16 (XMODEM) of
/// the key's hash tag (the text between the first `{` and the next `}`, if
/// not empty), else of the whole key, modulo 16,384.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// 64-bit FNV-1a: a hash that is the same in every process and version
/// (unlike std's `DefaultHasher`, which is seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The table the chart reads (`charts/rowpipe/files/shard-tags.yaml`): for
/// every shard count from 2 to [`MAX_SHARDS`], its tags in shard order.
pub fn chart_table() -> String {
    let mut out = String::from(
        "# Generated by `rowpipe shards --table`; do not edit.\n\
         # The hash tag of each shard, by shard count: shard i of N is the key\n\
         # <stream>:{<tag>} (services/core/src/stream/shards.rs says why).\n",
    );
    for count in 2..=MAX_SHARDS {
        let tags: Vec<String> = (0..count)
            .map(|i| format!("\"{}\"", tag(i, count)))
            .collect();
        out.push_str(&format!("\"{count}\": [{}]\n", tags.join(", ")));
    }
    out
}

/// Which shards a consumer serves: all, or a list such as `0,3-5`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ShardSet {
    #[default]
    All,
    Only(Vec<usize>),
}

/// A shard list that does not parse, or names a shard that does not exist.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ROWPIPE_SHARDS: {0}")]
pub struct ShardSetError(String);

impl ShardSet {
    /// Parse `all`, empty, or comma-separated indexes and inclusive ranges
    /// (`0,3-5`).
    pub fn parse(text: &str) -> Result<Self, ShardSetError> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        let mut shards = Vec::new();
        for part in text.split(',').map(str::trim) {
            let number = |s: &str| match s.trim().parse::<usize>() {
                Ok(n) if n < MAX_SHARDS as usize => Ok(n),
                Ok(n) => Err(ShardSetError(format!(
                    "shard {n} is past the largest possible ({})",
                    MAX_SHARDS - 1
                ))),
                Err(_) => Err(ShardSetError(format!(
                    "{s:?} is not a shard number (in {text:?})"
                ))),
            };
            match part.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (number(from)?, number(to)?);
                    if from > to {
                        return Err(ShardSetError(format!("the range {part:?} is empty")));
                    }
                    shards.extend(from..=to);
                }
                None => shards.push(number(part)?),
            }
        }
        shards.sort_unstable();
        shards.dedup();
        Ok(Self::Only(shards))
    }

    /// The shards served out of `count`, in order; an error names a shard
    /// that `count` does not have.
    pub fn resolve(&self, count: usize) -> Result<Vec<usize>, ShardSetError> {
        match self {
            Self::All => Ok((0..count).collect()),
            Self::Only(list) => {
                if let Some(bad) = list.iter().find(|&&s| s >= count) {
                    return Err(ShardSetError(format!(
                        "shard {bad} does not exist: ROWPIPE_STREAM_SHARDS is {count} (shards 0 to {})",
                        count - 1
                    )));
                }
                Ok(list.clone())
            }
        }
    }
}

impl fmt::Display for ShardSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Only(list) => {
                let parts: Vec<String> = list.iter().map(usize::to_string).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // An empty tag hashes the whole key.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn one_shard_is_the_stream_itself() {
        let shards = Shards::new("rowpipe:rows", 1);
        assert_eq!(shards.keys(), ["rowpipe:rows"]);
        assert_eq!(shards.for_email(Some("a@example.com")), 0);
    }

    /// The slots `redis-cli --cluster create` gives each of `primaries`
    /// (its `clusterManagerCommandCreate`: a float step, rounded).
    fn redis_cli_split(primaries: u32) -> Vec<(u32, u32)> {
        let per = 16_384.0_f32 / primaries as f32;
        let (mut first, mut cursor) = (0u32, 0.0_f32);
        let mut out = Vec::new();
        for i in 0..primaries {
            let mut last = (cursor + per - 1.0).round() as u32;
            if last > 16_384 || i == primaries - 1 {
                last = 16_383;
            }
            last = last.max(first);
            out.push((first, last));
            first = last + 1;
            cursor += per;
        }
        out
    }

    #[test]
    fn each_shard_lies_on_its_own_primary_of_a_cluster_of_as_many() {
        for count in 2..=MAX_SHARDS {
            let shards = Shards::new("rowpipe:rows", count);
            let split = redis_cli_split(count as u32);
            for (i, key) in shards.keys().iter().enumerate() {
                let s = slot(key.as_bytes()) as u32;
                let (first, last) = split[i];
                assert!(
                    (first..=last).contains(&s),
                    "{key}: slot {s} outside {first}..={last}"
                );
            }
        }
        // Three shards on a cluster of three primaries: one on each.
        let keys = Shards::new("rowpipe:rows", 3);
        // (`redis-cli --cluster create` gives them 0-5460, 5461-10922, 10923-16383.)
        let primaries: Vec<u16> = keys
            .keys()
            .iter()
            .map(|k| match slot(k.as_bytes()) {
                0..=5460 => 0,
                5461..=10922 => 1,
                _ => 2,
            })
            .collect();
        assert_eq!(primaries, [0, 1, 2]);
    }

    #[test]
    fn rows_of_one_address_meet_in_one_shard_and_spread_otherwise() {
        let shards = Shards::new("s", 4);
        let a = shards.for_email(Some("ann@example.com"));
        assert_eq!(a, shards.for_email(Some("ann@example.com")));
        assert_eq!(shards.for_email(None), 0);
        let mut seen = [0usize; 4];
        for i in 0..4000 {
            seen[shards.for_email(Some(&format!("user{i}@example.com")))] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn shard_lists_parse_and_name_only_real_shards() {
        assert_eq!(ShardSet::parse("").unwrap(), ShardSet::All);
        assert_eq!(ShardSet::parse("all").unwrap(), ShardSet::All);
        let set = ShardSet::parse("0, 3-5,4").unwrap();
        assert_eq!(set, ShardSet::Only(vec![0, 3, 4, 5]));
        assert_eq!(set.to_string(), "0,3,4,5");
        assert_eq!(set.resolve(6).unwrap(), [0, 3, 4, 5]);
        assert!(
            set.resolve(5)
                .unwrap_err()
                .to_string()
                .contains("shard 5 does not exist")
        );
        assert!(ShardSet::parse("2-1").is_err());
        // A huge range is refused, not expanded.
        assert!(ShardSet::parse("0-18446744073709551615").is_err());
        assert!(ShardSet::parse("64").is_err());
        assert!(ShardSet::parse("x").is_err());
        assert_eq!(ShardSet::All.resolve(3).unwrap(), [0, 1, 2]);
    }

    #[test]
    fn the_charts_shard_table_is_what_the_code_computes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../charts/rowpipe/files/shard-tags.yaml"
        );
        let file = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            file == chart_table(),
            "{path} is out of date: run `cargo run -p rowpipe-cli -- shards --table > charts/rowpipe/files/shard-tags.yaml`"
        );
    }
}
