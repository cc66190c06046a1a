//! MQTT 3.1.1 packets over a byte stream, with rumqttc's codec
//! (`rumqttc::mqttbytes::v4`: both directions, every field public).

use bytes::BytesMut;
use rumqttc::mqttbytes::{self, v4::Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroize;

/// Why a packet stream ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not MQTT 3.1.1, or too large a packet.
    #[error("malformed MQTT: {0}")]
    Protocol(mqttbytes::Error),
}

/// Reads whole packets; cancel-safe, so it can sit in a `select!`.
pub(crate) struct PacketReader<R> {
    /// The read half of the connection.
    inner: R,
    /// Bytes read but not yet parsed into a packet.
    buffer: BytesMut,
    /// The largest packet accepted.
    max_packet: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    pub(crate) fn new(inner: R, max_packet: usize) -> Self {
        PacketReader {
            inner,
            buffer: BytesMut::with_capacity(4 * 1024),
            max_packet,
        }
    }

    /// The next packet; `None` when the peer closed the connection
    /// between packets.
    pub(crate) async fn read(&mut self) -> Result<Option<Packet>, StreamError> {
        loop {
            match Packet::read(&mut self.buffer, self.max_packet) {
                Ok(packet) => return Ok(Some(packet)),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(StreamError::Protocol(e)),
            }
            // `read_buf` is cancel-safe: a cancelled call read nothing.
            if self.inner.read_buf(&mut self.buffer).await? == 0 {
                return if self.buffer.is_empty() {
                    Ok(None)
                } else {
                    Err(StreamError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }
}

impl<R> Drop for PacketReader<R> {
    fn drop(&mut self) {
        // Unparsed bytes may hold part of a CONNECT's password.
        self.buffer.as_mut().zeroize();
    }
}

/// Writes whole packets.
pub(crate) struct PacketWriter<W> {
    /// The write half of the connection.
    inner: W,
    /// Reused encoding buffer; wiped after each packet, which may be a
    /// CONNECT with a password.
    buffer: BytesMut,
}

impl<W: AsyncWrite + Unpin> PacketWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        PacketWriter {
            inner,
            buffer: BytesMut::with_capacity(4 * 1024),
        }
    }

    /// Encodes and sends `packet`.
    pub(crate) async fn write(&mut self, packet: &Packet) -> Result<(), StreamError> {
        self.buffer.clear();
        packet
            .write(&mut self.buffer, usize::MAX)
            .map_err(StreamError::Protocol)?;
        let sent = self.inner.write_all(&self.buffer).await;
        self.buffer.as_mut().zeroize();
        sent?;
        Ok(())
    }

    /// Flushes and closes the write side.
    pub(crate) async fn shutdown(&mut self) {
        // The peer may be gone already; there is nothing left to tell it.
        let _ = self.inner.shutdown().await;
    }
}
