//! Loopback connections for the benches' load generators (`benches/ipc.rs`,
//! `cli/benches/cluster.rs`, which includes this file by path).

/// How many loopback source addresses (127.0.0.1, .2, …) the load's connections are spread
/// over. Every client closes first, so its side of each connection waits in TIME_WAIT, and
/// the kernel gives a TIME_WAIT's port to a new connection to the same address and port
/// only once its timestamp is over a second old: from one source address, 28,232 ephemeral
/// ports make at most ~14k connections/s to one server, whatever the server. Eight source
/// addresses lift that bound eightfold.
pub const SOURCES: usize = 8;

/// Connects to `addr` from source address 127.0.0.(1 + `n` mod [`SOURCES`]), the port left
/// to `connect` (`IP_BIND_ADDRESS_NO_PORT`), so the port space is each source address's.
pub async fn connect(
    addr: std::net::SocketAddr,
    n: usize,
) -> std::io::Result<tokio::net::TcpStream> {
    use std::os::fd::AsRawFd;
    let socket = tokio::net::TcpSocket::new_v4()?;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd, and a c_int option value of the length given, which the
    // kernel only reads.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    socket.bind(([127, 0, 0, 1 + (n % SOURCES) as u8], 0).into())?;
    socket.connect(addr).await
}
