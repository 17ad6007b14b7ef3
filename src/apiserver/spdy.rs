//! The server side of SPDY/3.1 as Kubernetes uses it for `pods/portforward`
//! (the `portforward.k8s.io` protocol): kubectl opens a pair of streams per
//! forwarded connection, `streamType: error` then `streamType: data`, both
//! with the same `port` and `requestID`; the server answers each with
//! SYN_REPLY, copies the data stream to and from the pod's port, and
//! writes a message on the error stream if it cannot.
//!
//! kubectl ≥ 1.31 tunnels this over a WebSocket (subprotocol
//! `SPDY/3.1+portforward.k8s.io`, every binary message a run of bytes) and
//! falls back to a plain HTTP/1.1 `Upgrade: SPDY/3.1`. Both end up in
//! [`serve`] with a byte stream.
//!
//! Frames (draft-mbelshe-httpbis-spdy-00): control frames carry
//! `1 | version 3 | type`, flags and a 24-bit length; data frames a 31-bit
//! stream id, flags (FIN = 1) and a 24-bit length. Header blocks are
//! zlib-compressed with the protocol's fixed dictionary, one zlib stream
//! per direction for the whole session. Flow control is not enforced by
//! kubectl's client (moby/spdystream); windows are left alone.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;
/// The largest data frame this side sends.
const CHUNK: usize = 32 * 1024;
/// The largest frame this side accepts.
const MAX_FRAME: usize = 1 << 24;

/// The SPDY/3 header-compression dictionary: the protocol's words, each
/// with a 32-bit length, then a run of common values.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,",
        "publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// A protocol error that ends the session.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("reading the SPDY session: {0}")]
    Io(#[from] std::io::Error),
    #[error("SPDY header block: {0}")]
    Headers(String),
    #[error("SPDY frame of {0} bytes is too large")]
    TooLarge(usize),
}

/// One decoded frame.
#[derive(Debug, PartialEq)]
enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Vec<u8>,
    },
    SynStream {
        stream: u32,
        fin: bool,
        block: Vec<u8>,
    },
    RstStream {
        stream: u32,
    },
    Ping(Vec<u8>),
    GoAway,
    /// Settings, window updates, headers: nothing to do.
    Other,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(SpdyError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff;
    if head[0] & 0x80 == 0 {
        return Ok(Some(Frame::Data {
            stream: word(&head[..4]),
            fin: flags & FLAG_FIN != 0,
            data: body,
        }));
    }
    let ty = u16::from_be_bytes([head[2], head[3]]);
    Ok(Some(match ty {
        SYN_STREAM if body.len() >= 10 => Frame::SynStream {
            stream: word(&body[..4]),
            fin: flags & FLAG_FIN != 0,
            block: body[10..].to_vec(),
        },
        RST_STREAM if body.len() >= 4 => Frame::RstStream {
            stream: word(&body[..4]),
        },
        PING => Frame::Ping(body),
        GOAWAY => Frame::GoAway,
        _ => Frame::Other,
    }))
}

fn control(ty: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(0x8000u16 | 3).to_be_bytes());
    out.extend_from_slice(&ty.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(body);
    out
}

fn data_frame(stream: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.push(if fin { FLAG_FIN } else { 0 });
    out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(data);
    out
}

/// The two zlib streams of a session.
struct Headers {
    dict: Vec<u8>,
    inflate: Decompress,
    deflate: Compress,
}

impl Headers {
    fn new() -> Result<Self, SpdyError> {
        let dict = dictionary();
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&dict)
            .map_err(|e| SpdyError::Headers(e.to_string()))?;
        Ok(Self {
            dict,
            inflate: Decompress::new(true),
            deflate,
        })
    }

    fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            match self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&self.dict)
                        .map_err(|e| SpdyError::Headers(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Headers(e.to_string())),
            }
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            let produced = self.inflate.total_out() - before_out;
            if input.is_empty() && produced == 0 {
                break;
            }
        }
        parse_block(&out)
    }

    fn encode(&mut self, pairs: &[(&str, &str)]) -> Result<Vec<u8>, SpdyError> {
        let mut plain = Vec::new();
        plain.extend_from_slice(&(pairs.len() as u32).to_be_bytes());
        for (k, v) in pairs {
            plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
            plain.extend_from_slice(k.as_bytes());
            plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
            plain.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = &plain[..];
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(1024);
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Headers(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            // a sync flush is complete when it left room in the output
            if input.is_empty() && out.capacity() > out.len() {
                break;
            }
        }
        Ok(out)
    }
}

fn parse_block(b: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let bad = || SpdyError::Headers("truncated header block".into());
    let mut at = 0usize;
    let take_u32 = |at: &mut usize| -> Result<usize, SpdyError> {
        let s = b.get(*at..*at + 4).ok_or_else(bad)?;
        *at += 4;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    let n = take_u32(&mut at)?;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let kl = take_u32(&mut at)?;
        let k = b.get(at..at + kl).ok_or_else(bad)?;
        at += kl;
        let vl = take_u32(&mut at)?;
        let v = b.get(at..at + vl).ok_or_else(bad)?;
        at += vl;
        out.push((
            String::from_utf8_lossy(k).to_ascii_lowercase(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Ok(out)
}

/// A connection to the pod's port, as the forwarder got it.
pub type Upstream = Pin<Box<dyn AsyncReadWrite>>;

/// A byte stream both ways.
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> AsyncReadWrite for T {}

/// Opens the connection to a port of the pod (or says why it cannot).
pub type Opener = std::sync::Arc<
    dyn Fn(u16) -> Pin<Box<dyn Future<Output = Result<Upstream, String>> + Send>> + Send + Sync,
>;

enum Out {
    Reply(u32),
    Data(u32, Vec<u8>, bool),
    Raw(Vec<u8>),
}

#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
}

/// Serve one port-forward session on `io` until the client goes.
pub async fn serve<S>(io: S, open: Opener) -> Result<(), SpdyError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let mut headers = Headers::new()?;
    let mut reply_headers = Headers::new()?;
    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            let bytes = match out {
                Out::Reply(stream) => {
                    let block = match reply_headers.encode(&[]) {
                        Ok(b) => b,
                        Err(_) => break,
                    };
                    let mut body = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
                    body.extend_from_slice(&block);
                    control(SYN_REPLY, 0, &body)
                }
                Out::Data(stream, data, fin) => data_frame(stream, fin, &data),
                Out::Raw(b) => b,
            };
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // data stream → the sender feeding its upstream connection
    let mut feeds: HashMap<u32, mpsc::UnboundedSender<Option<Vec<u8>>>> = HashMap::new();
    let result = loop {
        let frame = match read_frame(&mut rd).await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match frame {
            Frame::SynStream { stream, block, .. } => {
                let h = match headers.decode(&block) {
                    Ok(h) => h,
                    Err(e) => break Err(e),
                };
                let get = |k: &str| {
                    h.iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let _ = tx.send(Out::Reply(stream));
                let port: u16 = get("port").parse().unwrap_or(0);
                let pair = pairs.entry(get("requestid")).or_default();
                pair.port = port;
                match get("streamtype").as_str() {
                    "error" => pair.error = Some(stream),
                    "data" => pair.data = Some(stream),
                    _ => {}
                }
                if let (Some(err_stream), Some(data_stream)) = (pair.error, pair.data) {
                    let (feed_tx, feed_rx) = mpsc::unbounded_channel();
                    feeds.insert(data_stream, feed_tx);
                    tokio::spawn(forward(
                        open.clone(),
                        pair.port,
                        err_stream,
                        data_stream,
                        feed_rx,
                        tx.clone(),
                    ));
                }
            }
            Frame::Data { stream, fin, data } => {
                if let Some(feed) = feeds.get(&stream) {
                    if !data.is_empty() {
                        let _ = feed.send(Some(data));
                    }
                    if fin {
                        let _ = feed.send(None);
                    }
                }
            }
            Frame::RstStream { stream } => {
                feeds.remove(&stream);
            }
            Frame::Ping(body) => {
                let _ = tx.send(Out::Raw(control(PING, 0, &body)));
            }
            Frame::GoAway => break Ok(()),
            Frame::Other => {}
        }
    };
    drop(feeds);
    drop(tx);
    let _ = writer.await;
    result
}

/// One forwarded connection: open the pod's port, then copy both ways.
async fn forward(
    open: Opener,
    port: u16,
    err_stream: u32,
    data_stream: u32,
    mut feed: mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    tx: mpsc::UnboundedSender<Out>,
) {
    let conn = match open(port).await {
        Ok(c) => c,
        Err(msg) => {
            let _ = tx.send(Out::Data(err_stream, msg.into_bytes(), true));
            let _ = tx.send(Out::Data(data_stream, Vec::new(), true));
            return;
        }
    };
    let (mut up_rd, mut up_wr) = tokio::io::split(conn);
    let to_pod = async {
        while let Some(Some(chunk)) = feed.recv().await {
            if up_wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = up_wr.shutdown().await;
    };
    let from_pod = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match up_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Out::Data(data_stream, buf[..n].to_vec(), false))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Out::Data(data_stream, Vec::new(), true));
    };
    tokio::join!(to_pod, from_pod);
    let _ = tx.send(Out::Data(err_stream, Vec::new(), true));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_protocols() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_through_the_session_zlib_streams() {
        let mut client = Headers::new().unwrap();
        let mut server = Headers::new().unwrap();
        for round in 0..3 {
            let port = format!("{}", 8080 + round);
            let block = client
                .encode(&[("streamtype", "data"), ("port", &port), ("requestid", "0")])
                .unwrap();
            let h = server.decode(&block).unwrap();
            assert_eq!(h[1], ("port".to_string(), port));
        }
    }

    #[tokio::test]
    async fn a_forwarded_connection_carries_bytes_both_ways() {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let open: Opener = std::sync::Arc::new(|port| {
            Box::pin(async move {
                if port != 80 {
                    return Err(format!("nothing listens on port {port}"));
                }
                let (a, mut b) = tokio::io::duplex(1024);
                tokio::spawn(async move {
                    let mut buf = [0u8; 5];
                    b.read_exact(&mut buf).await.unwrap();
                    b.write_all(&buf.to_ascii_uppercase()).await.unwrap();
                });
                Ok(Box::pin(a) as Upstream)
            })
        });
        let server = tokio::spawn(serve(server_io, open));
        let mut h = Headers::new().unwrap();
        let (mut rd, mut wr) = tokio::io::split(client_io);
        let syn = |h: &mut Headers, stream: u32, ty: &str, port: &str, req: &str| {
            let block = h
                .encode(&[("streamtype", ty), ("port", port), ("requestid", req)])
                .unwrap();
            let mut body = stream.to_be_bytes().to_vec();
            body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            body.extend_from_slice(&block);
            control(SYN_STREAM, 0, &body)
        };
        wr.write_all(&syn(&mut h, 1, "error", "80", "1"))
            .await
            .unwrap();
        wr.write_all(&syn(&mut h, 3, "data", "80", "1"))
            .await
            .unwrap();
        wr.write_all(&data_frame(3, false, b"hello")).await.unwrap();
        let mut got = Vec::new();
        let mut replies = 0;
        while let Some(f) = read_frame(&mut rd).await.unwrap() {
            match f {
                Frame::Data {
                    stream: 3,
                    data,
                    fin,
                } => {
                    got.extend(data);
                    if fin {
                        break;
                    }
                }
                Frame::Other => replies += 1,
                _ => {}
            }
        }
        assert_eq!(got, b"HELLO");
        assert_eq!(replies, 2, "each stream gets its SYN_REPLY");
        // a port nobody listens on: the error stream says so
        wr.write_all(&syn(&mut h, 5, "error", "81", "2"))
            .await
            .unwrap();
        wr.write_all(&syn(&mut h, 7, "data", "81", "2"))
            .await
            .unwrap();
        let mut error = Vec::new();
        while let Some(f) = read_frame(&mut rd).await.unwrap() {
            if let Frame::Data {
                stream: 5,
                data,
                fin,
            } = f
            {
                error.extend(data);
                if fin {
                    break;
                }
            }
        }
        assert_eq!(
            String::from_utf8(error).unwrap(),
            "nothing listens on port 81"
        );
        drop((rd, wr));
        server.await.unwrap().unwrap();
    }
}
