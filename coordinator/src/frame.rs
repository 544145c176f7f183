//! Length-prefixed framing: every packet in both directions is a 4-byte big-endian length and
//! that many bytes. A length outside `0..=max` closes the connection before anything is
//! allocated, as Apache ZooKeeper does with packets over `jute.maxbuffer`.

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The declared length is negative or over the limit.
    #[error("packet length {len} is outside 0..={max} (max_packet_bytes)")]
    BadLength {
        /// The declared length.
        len: i64,
        /// The limit.
        max: usize,
    },
    /// The connection ended inside a frame.
    #[error("connection closed in the middle of a packet")]
    Truncated,
    /// Socket error.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the 4-byte length prefix; `Ok(None)` on a clean end of stream before it.
pub async fn read_prefix<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<[u8; 4]>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 { Ok(None) } else { Err(FrameError::Truncated) };
        }
        got += n;
    }
    Ok(Some(len))
}

/// Reads the body of a frame whose prefix was already read.
pub async fn read_body<R: AsyncRead + Unpin>(r: &mut R, prefix: [u8; 4], max: usize) -> Result<Vec<u8>, FrameError> {
    let len = i32::from_be_bytes(prefix);
    if len < 0 || len as usize > max {
        return Err(FrameError::BadLength { len: len as i64, max });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    Ok(buf)
}

/// Reads one whole frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    match read_prefix(r).await? {
        None => Ok(None),
        Some(prefix) => read_body(r, prefix, max).await.map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_and_limits() {
        let mut input: &[u8] = &[0, 0, 0, 2, 9, 9, 0, 0, 0, 0];
        assert_eq!(read_frame(&mut input, 10).await.unwrap(), Some(vec![9, 9]));
        assert_eq!(read_frame(&mut input, 10).await.unwrap(), Some(vec![]));
        assert_eq!(read_frame(&mut input, 10).await.unwrap(), None);
        let mut big: &[u8] = &[0, 0, 0, 11];
        assert!(matches!(read_frame(&mut big, 10).await, Err(FrameError::BadLength { len: 11, max: 10 })));
        let mut neg: &[u8] = &[0xff, 0xff, 0xff, 0xfe];
        assert!(matches!(read_frame(&mut neg, 10).await, Err(FrameError::BadLength { len: -2, .. })));
        let mut cut: &[u8] = &[0, 0, 0, 4, 1];
        assert!(matches!(read_frame(&mut cut, 10).await, Err(FrameError::Truncated)));
        let mut half: &[u8] = &[0, 0];
        assert!(matches!(read_frame(&mut half, 10).await, Err(FrameError::Truncated)));
    }
}
