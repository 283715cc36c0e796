//! A TCP proxy on loopback in front of the API server, which a test can cut
//! to make the API server unreachable for one process without disturbing
//! the others.

use kube::config::Kubeconfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct TcpProxy {
    pub addr: SocketAddr,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
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
        let accept = {
            let tasks = tasks.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    tasks.lock().unwrap().push(relay.abort_handle());
                }
            })
        };
        tasks.lock().unwrap().push(accept.abort_handle());
        TcpProxy { addr, tasks }
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
