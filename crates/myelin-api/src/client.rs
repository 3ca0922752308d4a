//! A deliberately small blocking HTTP/1.1 client over a unix socket: the CNI
//! plugin runs once per container event and must start fast, so no async
//! runtime and no HTTP stack here. One request per connection.

use crate::ApiError;
use serde::{de::DeserializeOwned, Serialize};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {path}: {source} (is myelin-agent running?)")]
    Unreachable { path: PathBuf, source: std::io::Error },
    #[error("talking to the agent at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the agent sent a malformed answer: {0}")]
    Protocol(String),
    #[error("{}", .0.message)]
    Api(ApiError, u16),
}

/// Client of one agent socket.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self { path: path.as_ref().to_path_buf(), timeout: Duration::from_secs(60) }
    }

    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None::<&()>)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.call("POST", path, Some(body))
    }

    pub fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.call("PUT", path, Some(body))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("DELETE", path, None::<&()>)
    }

    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let io = |source| ClientError::Io { path: self.path.clone(), source };
        let mut stream = UnixStream::connect(&self.path)
            .map_err(|source| ClientError::Unreachable { path: self.path.clone(), source })?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Protocol(e.to_string()))?,
            None => Vec::new(),
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: myelin-agent\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        // One write: the server may answer and close as soon as it has the head.
        let mut request = head.into_bytes();
        request.extend_from_slice(&body);
        let written = stream.write_all(&request);
        // A server that answered early (e.g. an error) may have closed its side while we
        // were still writing: read what it said before reporting the write error.
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        if raw.is_empty() {
            written.map_err(io)?;
            read.map_err(io)?;
        }
        let (status, body) = parse_response(&raw)?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&body)
                .map_err(|e| ClientError::Protocol(format!("{e} in {}", String::from_utf8_lossy(&body))))
        } else {
            let err: ApiError = serde_json::from_slice(&body)
                .map_err(|_| ClientError::Protocol(format!("HTTP {status}: {}", String::from_utf8_lossy(&body))))?;
            Err(ClientError::Api(err, status))
        }
    }
}

/// Split a raw HTTP/1.1 response into status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), ClientError> {
    let bad = |m: &str| ClientError::Protocol(m.to_owned());
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("header is not UTF-8"))?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 =
        status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body).ok_or_else(|| bad("bad chunked body"))? } else { body.to_vec() };
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        let raw = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (s, b) = parse_response(raw).unwrap();
        assert_eq!((s, b.as_slice()), (404, &b"abcde"[..]));
    }

    #[test]
    fn an_early_answer_wins_over_a_broken_pipe() {
        // A server that answers before reading the request body and closes: the client
        // must report the answer, not the failed write.
        let dir = std::env::temp_dir().join(format!("myelin-api-early-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = [0u8; 64];
            let _ = s.read(&mut head);
            let body = br#"{"code":"not_found","message":"no such endpoint"}"#;
            let reply = format!("HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\n\r\n", body.len());
            s.write_all(reply.as_bytes()).unwrap();
            s.write_all(body).unwrap();
            // Dropped here: closed with most of the request unread.
        });
        let big = vec![7u8; 4 << 20];
        let err = Client::new(&sock).post::<_, serde_json::Value>("/v1/x", &big).unwrap_err();
        server.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        match err {
            ClientError::Api(api, 404) => assert_eq!(api.message, "no such endpoint"),
            other => panic!("expected the server's 404, got {other}"),
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }
}
