// The secret-bearing command lines of issue 18, as (argv, how the event shows it, the secret).
//
// Not a module: `redact.rs`'s unit tests and the integration tests (tests/redaction.rs, which
// runs each of these as a real process under the real process source) both `include!` this one
// table, so the two cannot drift apart. Every secret is a distinct word starting `S3cret`, so
// a test can look for it anywhere in what was recorded.
//
// Before issue 18 the first 20 kept their secret and the last 10 were caught (measured with the
// old rules on this table).
/// argv, the command line as shown, the secret.
#[allow(dead_code)]
type RedactionCase = (&'static [&'static str], &'static str, &'static str);

#[allow(dead_code)]
const ISSUE_18_CASES: &[RedactionCase] = &[
    (
        &["gpg", "--batch", "--passphrase", "S3cretGpg", "-d", "backup.tar.gpg"],
        "gpg --batch --passphrase [REDACTED] -d backup.tar.gpg",
        "S3cretGpg",
    ),
    (
        &["redis-cli", "-h", "cache.internal", "-a", "S3cretRedis", "PING"],
        "redis-cli -h cache.internal -a [REDACTED] PING",
        "S3cretRedis",
    ),
    (
        &["docker", "login", "-u", "deploy", "-p", "S3cretDocker", "registry.example.com"],
        "docker login -u deploy -p [REDACTED] registry.example.com",
        "S3cretDocker",
    ),
    (
        &["ldapsearch", "-x", "-D", "cn=admin,dc=example,dc=com", "-w", "S3cretLdap", "-b", "dc=example,dc=com"],
        "ldapsearch -x -D cn=admin,dc=example,dc=com -w [REDACTED] -b dc=example,dc=com",
        "S3cretLdap",
    ),
    (
        &["sqlcmd", "-S", "db.internal", "-U", "sa", "-P", "S3cretSqlcmd", "-Q", "SELECT 1"],
        "sqlcmd -S db.internal -U sa -P [REDACTED] -Q 'SELECT 1'",
        "S3cretSqlcmd",
    ),
    (
        &["wget", "--http-user=deploy", "--http-password", "S3cretWget", "https://files.example.com/a.tgz"],
        "wget --http-user=deploy --http-password [REDACTED] https://files.example.com/a.tgz",
        "S3cretWget",
    ),
    (
        &["keytool", "-list", "-keystore", "server.jks", "-storepass", "S3cretKeytool"],
        "keytool -list -keystore server.jks -storepass [REDACTED]",
        "S3cretKeytool",
    ),
    (
        &["7z", "x", "-pS3cret7z", "archive.7z"],
        "7z x -p[REDACTED] archive.7z",
        "S3cret7z",
    ),
    (
        &["zip", "-P", "S3cretZip", "notes.zip", "notes.txt"],
        "zip -P [REDACTED] notes.zip notes.txt",
        "S3cretZip",
    ),
    (
        &["vault", "login", "hvs.S3cretVault"],
        "vault login [REDACTED]",
        "S3cretVault",
    ),
    (
        &["mongo", "--host", "db.internal", "-u", "admin", "-p", "S3cretMongo", "admin"],
        "mongo --host db.internal -u admin -p [REDACTED] admin",
        "S3cretMongo",
    ),
    (
        &["env", "MYSQL_PWD=S3cretMysqlPwd", "mysql", "-u", "root", "shop"],
        "env MYSQL_PWD=[REDACTED] mysql -u root shop",
        "S3cretMysqlPwd",
    ),
    (
        &["git", "clone", "https://ghp_S3cretUrlToken@github.com/acme/app.git"],
        "git clone https://[REDACTED]@github.com/acme/app.git",
        "S3cretUrlToken",
    ),
    (
        &["curl", "-H", "X-Api-Key: S3cretApiKeyHeader", "https://api.example.com/v1/items"],
        "curl -H 'X-Api-Key: [REDACTED]' https://api.example.com/v1/items",
        "S3cretApiKeyHeader",
    ),
    (
        &["curl", "--header", "PRIVATE-TOKEN: S3cretGitlab", "https://gitlab.example.com/api/v4/projects"],
        "curl --header 'PRIVATE-TOKEN: [REDACTED]' https://gitlab.example.com/api/v4/projects",
        "S3cretGitlab",
    ),
    (
        &["curl", "-H", "Authorization: Digest username=\"admin\", realm=\"api\", nonce=\"7c1d\", uri=\"/\", response=\"S3cretDigest\"", "https://api.example.com/"],
        "curl -H 'Authorization: Digest [REDACTED]' https://api.example.com/",
        "S3cretDigest",
    ),
    (
        &["curl", "-H", "Authorization: S3cretBareAuth", "https://api.example.com/"],
        "curl -H 'Authorization: [REDACTED]' https://api.example.com/",
        "S3cretBareAuth",
    ),
    (
        &["openssl", "pkcs12", "-export", "-in", "cert.pem", "-inkey", "key.pem", "-out", "cert.p12", "-password", "pass:S3cretP12"],
        "openssl pkcs12 -export -in cert.pem -inkey key.pem -out cert.p12 -password pass:[REDACTED]",
        "S3cretP12",
    ),
    (
        &["az", "vm", "create", "-n", "vm1", "--admin-username", "azureuser", "--admin-password", "S3cretAdmin"],
        "az vm create -n vm1 --admin-username azureuser --admin-password [REDACTED]",
        "S3cretAdmin",
    ),
    (
        &["deployctl", "push", "--apiKey", "S3cretApiKeyOpt", "--clientSecret=S3cretClient"],
        "deployctl push --apiKey [REDACTED] --clientSecret=[REDACTED]",
        "S3cretApiKeyOpt",
    ),
    // Caught before issue 18 too.
    (
        &["mysql", "-u", "root", "-pS3cretMysql", "shop"],
        "mysql -u root -p[REDACTED] shop",
        "S3cretMysql",
    ),
    (
        &["mysqldump", "--password=S3cretEquals", "shop"],
        "mysqldump --password=[REDACTED] shop",
        "S3cretEquals",
    ),
    (
        &["sshpass", "-p", "S3cretSshpass", "ssh", "admin@db.internal"],
        "sshpass -p [REDACTED] ssh admin@db.internal",
        "S3cretSshpass",
    ),
    (
        &["curl", "-u", "admin:S3cretCurlUser", "https://api.example.com/"],
        "curl -u admin:[REDACTED] https://api.example.com/",
        "S3cretCurlUser",
    ),
    (
        &["curl", "-H", "Authorization: Bearer S3cretBearer", "https://api.example.com/"],
        "curl -H 'Authorization: Bearer [REDACTED]' https://api.example.com/",
        "S3cretBearer",
    ),
    (
        &["curl", "-H", "Authorization: Basic S3cretBasicQWxhZGRpbg==", "https://api.example.com/"],
        "curl -H 'Authorization: Basic [REDACTED]' https://api.example.com/",
        "S3cretBasic",
    ),
    (
        &["env", "PGPASSWORD=S3cretPg", "psql", "-h", "db.internal", "-U", "app"],
        "env PGPASSWORD=[REDACTED] psql -h db.internal -U app",
        "S3cretPg",
    ),
    (
        &["git", "clone", "https://deploy:S3cretUrlPass@git.example.com/app.git"],
        "git clone https://deploy:[REDACTED]@git.example.com/app.git",
        "S3cretUrlPass",
    ),
    (
        &["openssl", "rsa", "-in", "key.pem", "-passin", "pass:S3cretPassin", "-out", "plain.pem"],
        "openssl rsa -in key.pem -passin pass:[REDACTED] -out plain.pem",
        "S3cretPassin",
    ),
    (
        &["htpasswd", "-b", "/etc/nginx/htpasswd", "bob", "S3cretHtpasswd"],
        "htpasswd -b /etc/nginx/htpasswd bob [REDACTED]",
        "S3cretHtpasswd",
    ),
];
