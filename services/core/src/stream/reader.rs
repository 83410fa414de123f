//! The consumer's blocking read: `XREADGROUP … BLOCK`, decoded straight
//! into entries.
//!
//! Why a reader of its own beside redis-rs: redis-rs decodes every reply
//! through a generic RESP parser (built on `combine`) into a tree of values,
//! and the consumer then takes that tree apart again. An `XREADGROUP` reply
//! of a full batch holds about thirteen values per entry, and that decoding
//! stood out in the consumer's CPU profile. [`RawReader`] speaks only
//! what this one command needs over plain TCP: `AUTH`/`SELECT` when it
//! connects, `XREADGROUP`, and the RESP2 shapes of its reply, reading each
//! field into its final `String` once, with no allocation per line.
//!
//! What it measured (`docs/performance.md`, "The consumer's and the upload's
//! CPU"): the consumers' share of a core under the benchmark's load and the
//! end-to-end rows per second, with this reader and with redis-rs's
//! decoding; both improved, and the table there gives the figures.
//!
//! How to remove it: once redis-rs's parser is cheap enough (a faster decoder
//! is proposed upstream), make [`GroupReader`] the `Client` variant for every
//! URL, delete [`RawReader`] and the decoding below it, and run the
//! benchmark again to see that the consumer's CPU share stays where it is.
//! The tests in `services/consumer/tests/api/reader.rs` hold the behaviour
//! either way (auth, `SELECT`, field order, `NOGROUP`).
//!
//! URLs it does not serve (TLS `rediss://`, unix sockets) keep using
//! redis-rs, so [`GroupReader`] is one or the other. Either way the
//! connection is dedicated: a blocking read holds it for the whole block.

use std::time::Duration;

use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use super::{Connection, RawEntry, RedisTarget};

/// How long to wait for a reply beyond the requested block time before the
/// connection is considered dead.
const REPLY_MARGIN: Duration = Duration::from_secs(10);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest bulk string Redis sends (its `proto-max-bulk-len` default);
/// a bigger length means the stream of bytes is not what we think it is.
const MAX_BULK: i64 = 512 * 1024 * 1024;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// An error reply, e.g. `NOGROUP …`; the connection stays usable.
    #[error("redis replied with an error: {0}")]
    Server(String),
    #[error("redis connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    #[error("no reply from redis within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Client(#[from] redis::RedisError),
}

impl ReadError {
    /// The error code of an error reply: its first word (`NOGROUP`, `ERR`,
    /// `WRONGPASS`…), as redis-rs reads it.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReadError::Server(m) => m.split_whitespace().next(),
            ReadError::Client(e) => e.code(),
            _ => None,
        }
    }

    /// The stream or the group does not exist (e.g. a Redis without
    /// persistence restarted).
    pub fn is_no_group(&self) -> bool {
        self.code() == Some("NOGROUP")
    }
}

/// What one `XREADGROUP` asks for.
#[derive(Clone, Copy, Debug)]
pub struct ReadGroup<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub count: usize,
    pub block: Duration,
}

/// The dedicated read connection of one group member.
pub enum GroupReader {
    Raw(Box<RawReader>),
    Client(Connection),
}

impl GroupReader {
    /// Connect now, so a wrong URL or password fails at start-up. A
    /// cluster is read through redis-rs's cluster connection, which follows
    /// the slot of each shard's key to its primary.
    pub async fn connect(target: &RedisTarget, block: Duration) -> Result<Self, ReadError> {
        let raw = match target.urls.as_slice() {
            [url] if !target.cluster => RawReader::for_url(url)?,
            _ => None,
        };
        match raw {
            Some(mut raw) => {
                raw.connection().await?;
                Ok(Self::Raw(Box::new(raw)))
            }
            None => Ok(Self::Client(target.connect_blocking(block).await?)),
        }
    }

    /// Another reader like this one: a new connection of its own for the
    /// raw reader; for redis-rs's, a handle on the same multiplexed one
    /// (fine for one worker's shards, which it reads one at a time).
    pub fn sibling(&self) -> Self {
        match self {
            Self::Raw(raw) => Self::Raw(Box::new(raw.unconnected())),
            Self::Client(con) => Self::Client(con.clone()),
        }
    }

    /// New entries for this consumer (`>`), in stream order; empty when the
    /// block time passed without any.
    pub async fn read(&mut self, req: ReadGroup<'_>) -> Result<Vec<RawEntry>, ReadError> {
        match self {
            Self::Raw(raw) => raw.read(req).await,
            Self::Client(con) => {
                let reply: redis::Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(req.group)
                    .arg(req.consumer)
                    .arg("COUNT")
                    .arg(req.count)
                    .arg("BLOCK")
                    .arg(block_ms(req.block))
                    .arg("STREAMS")
                    .arg(req.stream)
                    .arg(">")
                    .query_async(con)
                    .await?;
                Ok(read_reply_entries(reply))
            }
        }
    }
}

/// The entries of an `XREADGROUP`/`XREAD` reply (RESP2 arrays or RESP3 maps;
/// `Nil` when the block timed out), taken apart by value: the field strings
/// are the reply's own buffers, with no per-field copy and no map per entry.
fn read_reply_entries(reply: redis::Value) -> Vec<RawEntry> {
    use redis::Value;
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        out.extend(range_entries(entries));
    }
    out
}

/// The entries of an `XRANGE` reply, or of one stream of an `XREADGROUP`
/// reply, in order, each with its fields in stream order.
pub(crate) fn range_entries(entries: redis::Value) -> Vec<RawEntry> {
    use redis::Value;
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(parts) = e else { continue };
        let mut parts = parts.into_iter();
        let Some(id) = parts.next() else { continue };
        let mut fields = Vec::new();
        if let Some(Value::Array(kv)) = parts.next() {
            fields.reserve(kv.len() / 2);
            let mut kv = kv.into_iter();
            while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                fields.push((
                    super::entry::value_into_string(k),
                    super::entry::value_into_string(v),
                ));
            }
        }
        out.push((super::entry::value_into_string(id), fields));
    }
    out
}

fn block_ms(block: Duration) -> u64 {
    (block.as_millis() as u64).max(1)
}

/// `XREADGROUP` over a plain TCP connection, reconnecting after failures.
pub struct RawReader {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    conn: Option<BufStream<TcpStream>>,
    line: Vec<u8>,
}

impl RawReader {
    /// A reader for `redis://` URLs; `None` for those it leaves to redis-rs.
    pub fn for_url(url: &str) -> Result<Option<Self>, ReadError> {
        let info = url.into_connection_info()?;
        let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Ok(None);
        };
        let settings = info.redis_settings();
        Ok(Some(Self {
            host,
            port,
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
            db: settings.db(),
            conn: None,
            line: Vec::with_capacity(64),
        }))
    }

    /// The same server and credentials, not yet connected.
    fn unconnected(&self) -> Self {
        Self {
            host: self.host.clone(),
            port: self.port,
            username: self.username.clone(),
            password: self.password.clone(),
            db: self.db,
            conn: None,
            line: Vec::with_capacity(64),
        }
    }

    async fn connection(&mut self) -> Result<&mut BufStream<TcpStream>, ReadError> {
        if self.conn.is_none() {
            let addr = (self.host.as_str(), self.port);
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| ReadError::Timeout(CONNECT_TIMEOUT))??;
            tcp.set_nodelay(true)?;
            let socket = redis::io::tcp::socket2::SockRef::from(&tcp);
            socket.set_tcp_keepalive(&super::keepalive())?;
            socket.set_tcp_user_timeout(Some(super::USER_TIMEOUT))?;
            let mut conn = BufStream::with_capacity(256 * 1024, 8 * 1024, tcp);
            let mut handshake: Vec<Vec<&str>> = Vec::new();
            let db = self.db.to_string();
            match (&self.username, &self.password) {
                (Some(u), Some(p)) => handshake.push(vec!["AUTH", u, p]),
                (None, Some(p)) => handshake.push(vec!["AUTH", p]),
                _ => {}
            }
            if self.db != 0 {
                handshake.push(vec!["SELECT", &db]);
            }
            for args in handshake {
                conn.write_all(&encode(&args)).await?;
                conn.flush().await?;
                let kind = read_line(&mut conn, &mut self.line).await?;
                if kind != b'+' {
                    return Err(ReadError::Server(line_text(&self.line)));
                }
            }
            self.conn = Some(conn);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| ReadError::Protocol("no connection".into()))
    }

    async fn read(&mut self, req: ReadGroup<'_>) -> Result<Vec<RawEntry>, ReadError> {
        let count = req.count.to_string();
        let block = block_ms(req.block).to_string();
        let command = encode(&[
            "XREADGROUP",
            "GROUP",
            req.group,
            req.consumer,
            "COUNT",
            &count,
            "BLOCK",
            &block,
            "STREAMS",
            req.stream,
            ">",
        ]);
        let wait = req.block + REPLY_MARGIN;
        let result = async {
            let mut line = std::mem::take(&mut self.line);
            let conn = self.connection().await?;
            conn.write_all(&command).await?;
            conn.flush().await?;
            let reply = tokio::time::timeout(wait, decode_read_reply(conn, &mut line))
                .await
                .map_err(|_| ReadError::Timeout(wait));
            self.line = line;
            reply?
        }
        .await;
        match result {
            Ok(entries) => Ok(entries),
            // A complete error reply leaves the connection in step.
            Err(e @ ReadError::Server(_)) => Err(e),
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One `\r\n`-terminated line into `line` (the CRLF removed); its type
/// byte. An error reply (`-…`) becomes [`ReadError::Server`]. Nothing is
/// allocated per line: a reply has about fourteen of them per entry.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> Result<u8, ReadError> {
    line.clear();
    let n = r.read_until(b'\n', line).await?;
    if n == 0 {
        return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if n < 3 || !line.ends_with(b"\r\n") {
        return Err(ReadError::Protocol(format!(
            "malformed line {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    line.truncate(n - 2);
    if line[0] == b'-' {
        return Err(ReadError::Server(line_text(line)));
    }
    Ok(line[0])
}

/// The text of a line after its type byte.
fn line_text(line: &[u8]) -> String {
    String::from_utf8_lossy(line.get(1..).unwrap_or_default()).into_owned()
}

/// A header of the given type (`*` array, `$` bulk string) and its length;
/// `None` for RESP2's null (`-1`).
async fn read_len<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    want: u8,
) -> Result<Option<usize>, ReadError> {
    let kind = read_line(r, line).await?;
    if kind != want {
        return Err(ReadError::Protocol(format!(
            "expected {:?}, got {:?}{}",
            want as char,
            kind as char,
            line_text(line)
        )));
    }
    let n: i64 = std::str::from_utf8(&line[1..])
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ReadError::Protocol(format!("bad length {:?}", line_text(line))))?;
    match n {
        -1 => Ok(None),
        n if (0..=MAX_BULK).contains(&n) => Ok(Some(n as usize)),
        n => Err(ReadError::Protocol(format!("length {n} out of range"))),
    }
}

/// A bulk string, copied once from the read buffer into its final `String`
/// (a null one is empty).
async fn read_bulk<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> Result<String, ReadError> {
    let Some(len) = read_len(r, line, b'$').await? else {
        return Ok(String::new());
    };
    let mut buf = Vec::with_capacity(len + 2);
    while buf.len() < len + 2 {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let take = available.len().min(len + 2 - buf.len());
        buf.extend_from_slice(&available[..take]);
        r.consume(take);
    }
    if !buf.ends_with(b"\r\n") {
        return Err(ReadError::Protocol("bulk string without CRLF".into()));
    }
    buf.truncate(len);
    Ok(String::from_utf8(buf)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// The reply of `XREADGROUP … STREAMS <one stream> >` in RESP2: null on
/// timeout, else `[[stream, [[id, [field, value, …]], …]]]`.
async fn decode_read_reply<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> Result<Vec<RawEntry>, ReadError> {
    let Some(streams) = read_len(r, line, b'*').await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for _ in 0..streams {
        if read_len(r, line, b'*').await? != Some(2) {
            return Err(ReadError::Protocol(
                "a stream is not [name, entries]".into(),
            ));
        }
        read_bulk(r, line).await?;
        let entries = read_len(r, line, b'*').await?.unwrap_or(0);
        out.reserve(entries);
        for _ in 0..entries {
            if read_len(r, line, b'*').await? != Some(2) {
                return Err(ReadError::Protocol("an entry is not [id, fields]".into()));
            }
            let id = read_bulk(r, line).await?;
            // Null for an entry deleted while pending (not for `>` reads).
            let values = read_len(r, line, b'*').await?.unwrap_or(0);
            let mut fields = Vec::with_capacity(values / 2);
            for _ in 0..values / 2 {
                let k = read_bulk(r, line).await?;
                let v = read_bulk(r, line).await?;
                fields.push((k, v));
            }
            if values % 2 == 1 {
                read_bulk(r, line).await?;
            }
            out.push((id, fields));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decode(bytes: &[u8]) -> Result<Vec<RawEntry>, ReadError> {
        let mut r = tokio::io::BufReader::with_capacity(7, bytes);
        decode_read_reply(&mut r, &mut Vec::new()).await
    }

    #[tokio::test]
    async fn a_reply_decodes_into_entries_in_stream_order() {
        let reply = b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n\
            *2\r\n$3\r\n1-0\r\n*4\r\n$5\r\nemail\r\n$7\r\na@b.org\r\n$4\r\nname\r\n$0\r\n\r\n\
            *2\r\n$3\r\n1-1\r\n*2\r\n$4\r\nn\xc3\xa4m\r\n$4\r\nx\r\ny\r\n";
        let entries = decode(reply).await.expect("decodes");
        assert_eq!(
            entries,
            vec![
                (
                    "1-0".to_string(),
                    vec![
                        ("email".to_string(), "a@b.org".to_string()),
                        ("name".to_string(), String::new()),
                    ]
                ),
                (
                    "1-1".to_string(),
                    vec![("näm".to_string(), "x\r\ny".to_string())]
                ),
            ]
        );
    }

    #[tokio::test]
    async fn a_timeout_is_no_entries_and_an_error_reply_says_what_redis_said() {
        assert!(decode(b"*-1\r\n").await.expect("null").is_empty());
        let e = decode(b"-NOGROUP No such key 's'\r\n")
            .await
            .expect_err("error");
        assert!(e.is_no_group(), "{e}");
    }

    #[tokio::test]
    async fn truncated_or_foreign_bytes_are_errors_not_entries() {
        for bad in [
            &b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\na\r\n"[..],
            b"+OK\r\n",
            b"*1\r\n*2\r\n$99999999999\r\n",
            b"*1\r\n*2\r\n$1\r\nsX\n",
            b"",
        ] {
            assert!(
                decode(bad).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn commands_are_resp_arrays_of_bulk_strings() {
        assert_eq!(encode(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
