//! A TCP proxy on loopback in front of the API server, which a test can cut
//! to make the API server unreachable for one process without disturbing
//! the others.

use kube::config::Kubeconfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    /// False while stalled: connections stay open, nothing is forwarded.
    flowing: watch::Sender<bool>,
}

/// Copies `from` to `to` while the gate is open; while it is closed, holds
/// whatever it read and reads nothing more.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if gate.wait_for(|open| *open).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        Self::start_on(0, target).await
    }

    /// A proxy on a given loopback port (0: any), e.g. to come back after `cut`.
    pub async fn start_on(port: u16, target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("binding the proxy");
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (flowing, gate) = watch::channel(true);
        let accept = {
            let tasks = tasks.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let gate = gate.clone();
                    let relay = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(target).await {
                            let (in_read, in_write) = inbound.into_split();
                            let (out_read, out_write) = outbound.into_split();
                            tokio::join!(pump(in_read, out_write, gate.clone()), pump(out_read, in_write, gate));
                        }
                    });
                    tasks.lock().unwrap().push(relay.abort_handle());
                }
            })
        };
        tasks.lock().unwrap().push(accept.abort_handle());
        TcpProxy { addr, tasks, flowing }
    }

    /// Holds every connection open and forwards nothing (new ones are
    /// accepted and held too), as a hung network path or API server does.
    pub fn stall(&self) {
        self.flowing.send_replace(false);
    }

    /// Forwards again what was held and everything after it.
    pub fn flow(&self) {
        self.flowing.send_replace(true);
    }

    /// Stops accepting and drops every open connection.
    pub fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// A copy of `kubeconfig` whose server is this proxy; returns the
    /// API server's address and the new file.
    pub fn kubeconfig_through(kubeconfig: &Path, dir: &Path) -> (SocketAddr, impl FnOnce(SocketAddr) -> PathBuf) {
        let config = Kubeconfig::read_from(kubeconfig).expect("reading the kubeconfig");
        let server = config.clusters[0].cluster.as_ref().unwrap().server.clone().unwrap();
        let authority = server.trim_start_matches("https://").trim_end_matches('/').to_string();
        let target: SocketAddr = authority.parse().unwrap_or_else(|_| {
            use std::net::ToSocketAddrs;
            authority.to_socket_addrs().unwrap().next().unwrap()
        });
        let dir = dir.to_path_buf();
        let write = move |proxy: SocketAddr| {
            let mut config = config;
            for cluster in &mut config.clusters {
                if let Some(c) = cluster.cluster.as_mut() {
                    c.server = Some(format!("https://{proxy}"));
                    // The serving certificate names the real address.
                    if c.tls_server_name.is_none() && !authority.starts_with("127.") {
                        c.tls_server_name = authority.split(':').next().map(str::to_string);
                    }
                }
            }
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("proxied-{}.kubeconfig", proxy.port()));
            std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
            path
        };
        (target, write)
    }
}
