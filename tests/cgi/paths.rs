//! Paths never lead out of the root; bad configuration is an error, not a panic.

use super::support::*;

#[tokio::test]
async fn traversal_attempts_are_refused() {
    let root = Root::new();
    let marker = root.dir.join("outside-ran");
    let outside = root.write_exec(
        &root.dir.join("outside/secret"),
        &format!(
            "#!/bin/sh\ntouch {}\nprintf 'Content-Type: text/plain\\n\\nsecret'\n",
            marker.display()
        ),
    );
    // A copy in the parent of the root, reachable by `..` from it.
    root.write_exec(
        &root.dir.join("secret"),
        &format!(
            "#!/bin/sh\ntouch {}\nprintf 'Content-Type: text/plain\\n\\nsecret'\n",
            marker.display()
        ),
    );
    root.script(
        "sub/ok",
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\nok'\n",
    );
    std::os::unix::fs::symlink(&outside, root.www().join("link-out")).unwrap();
    std::os::unix::fs::symlink(root.dir.join("outside"), root.www().join("dir-out")).unwrap();
    std::os::unix::fs::symlink(root.www().join("sub/ok"), root.www().join("link-in")).unwrap();
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    for path in [
        "/cgi-bin/../secret",
        "/cgi-bin/sub/../../secret",
        "/cgi-bin/%2e%2e/secret",
        "/cgi-bin/%2E%2E/secret",
        "/cgi-bin/.%2e/secret",
        "/cgi-bin/sub/..%2f..%2fsecret",
        "/cgi-bin/%2e%2e%2fsecret",
        "/cgi-bin/..%5csecret",
        "/cgi-bin/link-out",
        "/cgi-bin/dir-out/secret",
        "/cgi-bin/./sub/ok",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw(server.addr, request.as_bytes()).await;
        let code: u16 = answer[9..12].parse().unwrap();
        assert!((400..500).contains(&code), "{path}: {answer}");
        assert!(!answer.contains("secret"), "{path}: {answer}");
    }
    assert!(!marker.exists(), "a script outside the root ran");
    // Symlinks that stay inside the root work.
    let (resp, body) = get(server.addr, "/cgi-bin/link-in").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(body, b"ok");
    server.stop().await;
    root.assert_no_process_left().await;
}

#[tokio::test]
async fn bad_configuration_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Cgi::root("/no/such/brood/root")
        .serve(listener)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "ENOENT");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Cgi::root("/")
        .prefix("cgi-bin")
        .serve(listener)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "EINVAL");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Cgi::root("/")
        .env("A=B", "c")
        .serve(listener)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "EINVAL");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Cgi::root("/")
        .max_children(0)
        .serve(listener)
        .await
        .unwrap_err();
    assert_eq!(err.name(), "EINVAL");

    let root = Root::new();
    let plain = root.www().join("plain");
    std::fs::write(&plain, "not a program").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Cgi::script(&plain).serve(listener).await.unwrap_err();
    assert_eq!(err.name(), "EACCES");
    assert!(err.to_string().contains("not executable"), "{err}");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = Cgi::script(root.www()).serve(listener).await.unwrap_err();
    assert_eq!(err.name(), "EINVAL");
}

/// A compiled program runs from the open file that was checked, and still carries its own
/// name (`/proc/PID/comm`, what `ps`, `top` and `pkill` show), not the fd's number, where
/// the kernel names an `execveat(fd, "", AT_EMPTY_PATH)` after the file (Linux 6.14+).
#[tokio::test]
async fn a_compiled_script_is_named_after_its_file() {
    let root = Root::new();
    let src = root.dir.join("whoami.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n\
         int main(void) {\n\
           char name[64] = {0};\n\
           FILE *f = fopen(\"/proc/self/comm\", \"r\");\n\
           if (f) { fgets(name, sizeof name, f); fclose(f); }\n\
           printf(\"Content-Type: text/plain\\r\\n\\r\\n%s\", name);\n\
           return 0;\n\
         }\n",
    )
    .unwrap();
    let bin = root.www().join("whoami-cgi");
    let built = std::process::Command::new("gcc")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("gcc is installed");
    assert!(built.success(), "gcc failed");
    let logs = Logs::default();
    let server = start(root.cgi(&logs)).await;
    let (resp, body) = get(server.addr, "/cgi-bin/whoami-cgi").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let name = String::from_utf8(body).unwrap();
    let (major, minor) = kernel_version();
    if (major, minor) >= (6, 14) {
        assert_eq!(name.trim_end(), "whoami-cgi");
    } else {
        // Older kernels name it after the fd (a number) whichever way it is exec'd.
        assert!(!name.trim_end().is_empty());
    }
    server.stop().await;
}

fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
