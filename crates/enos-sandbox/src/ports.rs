//! [`PortReservation`]: holds a TCP port so that nobody else gets it, while
//! still letting rumqttd (in this process or a child) listen on it.
//!
//! rumqttd binds its listeners itself, from a `SocketAddr`, and cannot
//! report the port the OS chose for port 0. So the port is chosen here:
//! a socket with `SO_REUSEADDR` is bound (to port 0, or to the port asked
//! for) and kept open **without listening**. On Linux:
//!
//! - the OS never hands that port to another `bind(…:0)` nor uses it as
//!   the local port of an outgoing connection while the socket is bound;
//! - rumqttd's own bind (tokio sets `SO_REUSEADDR`) and `listen` on the
//!   same address succeed, because a bound socket that is not listening
//!   does not conflict with another `SO_REUSEADDR` socket;
//! - a port that another process *listens* on fails here at once, with a
//!   clear "address in use", rather than later inside rumqttd's thread.
//!
//! The test harness holds its reservations for the life of a
//! `enos_testkit::sandbox::Sandbox`, so that a restarted child gets the same ports back
//! even if other tests open connections in between.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::SandboxError;

/// A bound, non-listening `SO_REUSEADDR` socket; the port is free again
/// when this is dropped.
#[derive(Debug)]
pub struct PortReservation {
    /// Kept open only to hold the port; never listens or connects.
    _socket: Socket,
    /// The address with the port the OS chose (or the one asked for).
    addr: SocketAddr,
}

impl PortReservation {
    /// Reserves `addr`; port 0 picks a free port.
    pub fn reserve(addr: SocketAddr) -> Result<Self, SandboxError> {
        let fail = |e: std::io::Error| SandboxError::Listen {
            addr,
            reason: e.to_string(),
        };
        // socket2 opens sockets close-on-exec: a child does not inherit it.
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(fail)?;
        socket.set_reuse_address(true).map_err(fail)?;
        socket.bind(&addr.into()).map_err(fail)?;
        let bound = socket
            .local_addr()
            .map_err(fail)?
            .as_socket()
            .ok_or_else(|| SandboxError::Listen {
                addr,
                reason: "the socket has no IP address".into(),
            })?;
        Ok(PortReservation {
            _socket: socket,
            addr: bound,
        })
    }

    /// The reserved address, with the actual port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    use super::*;

    #[test]
    fn reserved_port_is_listenable_and_not_handed_out() {
        let reservation =
            PortReservation::reserve((Ipv4Addr::LOCALHOST, 0).into()).expect("reserve");
        let port = reservation.addr().port();
        assert_ne!(port, 0);
        // bind(0) elsewhere never gets the reserved port.
        let others: Vec<TcpListener> = (0..200)
            .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind"))
            .collect();
        assert!(
            others
                .iter()
                .all(|l| l.local_addr().expect("addr").port() != port)
        );
        // A SO_REUSEADDR listener (what tokio and so rumqttd create) gets it.
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        listener.set_reuse_address(true).expect("reuse");
        listener
            .bind(&reservation.addr().into())
            .expect("bind reserved port");
        listener.listen(8).expect("listen");
        TcpStream::connect(reservation.addr()).expect("connects to the listener");
        // While it listens, a second reservation of the port fails clearly.
        let err = PortReservation::reserve(reservation.addr()).expect_err("in use");
        assert!(err.to_string().contains(&port.to_string()), "{err}");
    }
}
