//! moto's server, standing in for AWS (Secrets Manager, SQS) in the tests.

/// A moto server (PyPI `moto[server]`, installed by `scripts/test-deps.sh`) on a free port.
pub struct Moto {
    child: std::process::Child,
    /// Endpoint URL (`AWS_ENDPOINT_URL`).
    pub url: String,
}

impl Moto {
    /// Starts one; it stops when dropped.
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 with moto[server] must be installed (make test installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Moto {
                    child,
                    url: format!("http://127.0.0.1:{port}"),
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("moto_server did not start on port {port}");
    }

    /// Runs `code` with `c`, a boto3 client of `service` for this server (boto3 comes with
    /// moto); returns what it printed.
    pub fn boto3(&self, service: &str, code: &str) -> String {
        let script = format!(
            "import boto3; c = boto3.client('{service}', endpoint_url='{}', region_name='eu-west-1', \
             aws_access_key_id='test', aws_secret_access_key='test'); {code}",
            self.url
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Creates a secret and returns its ARN.
    pub fn create_secret(&self, name: &str, value: &str) -> String {
        self.boto3(
            "secretsmanager",
            &format!("print(c.create_secret(Name='{name}', SecretString='{value}')['ARN'])"),
        )
    }

    /// Stores a new value of a secret.
    pub fn put_secret(&self, arn: &str, value: &str) {
        self.boto3(
            "secretsmanager",
            &format!("c.put_secret_value(SecretId='{arn}', SecretString='{value}')"),
        );
    }
}

impl Moto {
    /// The environment an AWS SDK client needs to talk to this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "eu-west-1".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
