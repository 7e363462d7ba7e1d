//! Linux autobind: `pipe::Listener::autobind` gets a unique abstract name from the kernel.

use brood::pipe::{self, Listener, Name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn autobind_gets_a_unique_abstract_name_that_clients_reach() {
    let a = Listener::autobind().unwrap();
    let b = Listener::autobind_with_backlog(4).unwrap();
    let name = a.name().clone();
    let Name::Abstract(bytes) = &name else {
        panic!("not abstract: {name:?}");
    };
    // unix(7): five hex digits.
    assert_eq!(bytes.len(), 5, "{name}");
    assert!(bytes.iter().all(|c| c.is_ascii_hexdigit()), "{name}");
    assert_eq!(a.local_addr().unwrap(), name);
    assert_ne!(b.name(), a.name(), "each autobind is unique");

    let mut client = pipe::connect(name.to_string()).await.unwrap();
    let mut server = a.accept().await.unwrap();
    client.write_all(b"autobound").await.unwrap();
    let mut buf = [0u8; 9];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"autobound");
    assert_eq!(
        pipe::peer_name(&client).unwrap(),
        name,
        "the client sees the name"
    );

    // The name goes with the listener. Another test of this binary spawns a child at the same
    // time: between its clone and its exec that child holds a copy of every fd, this
    // listener's included (close-on-exec acts at exec), so the name may outlive the drop
    // for that moment. Poll until refused, bounded.
    drop(server);
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match pipe::connect(name.to_string()).await {
            Err(err) => {
                assert_eq!(err.name(), "ECONNREFUSED", "{err}");
                break;
            }
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await
            }
            Ok(_) => panic!("{name} still reachable 10 s after its listener was dropped"),
        }
    }
}

#[tokio::test]
async fn a_child_connects_to_an_autobound_name_it_is_given() {
    let l = Listener::autobind().unwrap();
    let name = l.name().to_string();
    let mut child = brood::Command::new("python3")
        .args([
            "-c",
            "import socket, sys; s = socket.socket(socket.AF_UNIX); \
             s.connect('\\0' + sys.argv[1][1:]); s.sendall(b'from python')",
            &name,
        ])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let limit = std::time::Duration::from_secs(30);
    let mut s = tokio::select! {
        s = l.accept() => s.unwrap(),
        exit = child.wait() => panic!("python exited before connecting: {exit:?}"),
        _ = tokio::time::sleep(limit) => panic!("no connection within {limit:?}"),
    };
    let mut got = String::new();
    tokio::time::timeout(limit, s.read_to_string(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "from python");
    assert!(child.wait().await.unwrap().success());
}
