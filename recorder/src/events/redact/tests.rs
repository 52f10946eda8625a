//! The redaction rules, case by case: the secret-bearing command lines of issue 18 (one table,
//! shared with the integration tests), values with spaces in argv and in scripts, titles, and
//! what must be left alone.

use super::*;

fn argv(s: &[&str]) -> Vec<String> {
    s.iter().map(|a| (*a).to_owned()).collect()
}

fn builtin() -> Redactor {
    Redactor::new(&RedactionConfig::default()).unwrap()
}

fn line(r: &Redactor, a: &[&str]) -> String {
    r.command_line(&argv(a))
}

#[test]
fn secret_options_of_any_program() {
    let r = builtin();
    assert_eq!(
        line(&r, &["tool", "--password=hunter2", "-v"]),
        "tool --password=[REDACTED] -v"
    );
    assert_eq!(
        line(&r, &["tool", "--token", "abc.def", "next"]),
        "tool --token [REDACTED] next"
    );
    assert_eq!(
        line(&r, &["vault", "login", "--secret-key=s3cr3t"]),
        "vault login --secret-key=[REDACTED]"
    );
}

#[test]
fn program_rules_apply_wherever_the_program_appears() {
    let r = builtin();
    assert_eq!(
        line(&r, &["mysql", "-uroot", "-phunter2", "db"]),
        "mysql -uroot -p[REDACTED] db"
    );
    assert_eq!(
        line(&r, &["/usr/bin/sudo", "/usr/bin/mysqldump", "-ps3", "db"]),
        "/usr/bin/sudo /usr/bin/mysqldump -p[REDACTED] db"
    );
    // A script passed to a shell as one argument.
    assert_eq!(
        line(&r, &["sh", "-c", "mysql -uroot -phunter2 < dump.sql"]),
        "sh -c 'mysql -uroot -p[REDACTED] < dump.sql'"
    );
    assert_eq!(
        line(&r, &["sshpass", "-p", "pw", "ssh", "host"]),
        "sshpass -p [REDACTED] ssh host"
    );
    assert_eq!(
        line(&r, &["curl", "-u", "admin:pw", "https://h/"]),
        "curl -u admin:[REDACTED] https://h/"
    );
    assert_eq!(
        line(&r, &["smbclient", "//srv/c$", "-U", "DOM\\admin%pw"]),
        "smbclient //srv/c$ -U 'DOM\\admin%[REDACTED]'"
    );
    assert_eq!(
        line(&r, &["htpasswd", "-b", "/etc/htpasswd", "bob", "pw"]),
        "htpasswd -b /etc/htpasswd bob [REDACTED]"
    );
    assert_eq!(
        line(&r, &["openssl", "enc", "-pass", "pass:pw", "-in", "f"]),
        "openssl enc -pass pass:[REDACTED] -in f"
    );
}

#[test]
fn patterns_hide_urls_assignments_and_headers() {
    let r = builtin();
    assert_eq!(
        line(&r, &["git", "clone", "https://bob:tok3n@git.example/x.git"]),
        "git clone https://bob:[REDACTED]@git.example/x.git"
    );
    assert_eq!(
        line(&r, &["env", "DB_PASSWORD=pw", "GITHUB_TOKEN=ghp_x", "app"]),
        "env DB_PASSWORD=[REDACTED] GITHUB_TOKEN=[REDACTED] app"
    );
    assert_eq!(
        line(
            &r,
            &["curl", "-H", "Authorization: Bearer eyJabc", "https://h/"]
        ),
        "curl -H 'Authorization: Bearer [REDACTED]' https://h/"
    );
}

#[test]
fn ordinary_command_lines_are_left_alone() {
    let r = builtin();
    for a in [
        &["ls", "-p", "/tmp"][..],
        &["grep", "-r", "password", "/etc/ssh"],
        &["git", "commit", "-m", "rotate the password policy"],
        &["mysql", "-p", "payroll"],
        &["passwd", "alice"],
        &["app", "--password-file=/run/secrets/db"],
        &["net", "user", "alice", "/domain"],
        &["docker", "run", "-u", "1000:1000", "img"],
        &["curl", "https://example.com/a:b@c"],
    ] {
        let want: Vec<String> = a.iter().map(|s| quote(s)).collect();
        assert_eq!(line(&r, a), want.join(" "), "{a:?} was altered");
    }
}

#[test]
fn quoting_and_control_characters() {
    let r = builtin();
    assert_eq!(
        line(&r, &["echo", "it's", "", "a\nb", "\u{1b}[2J"]),
        "echo 'it'\\''s' '' 'a\\nb' '\\x1b[2J'"
    );
    assert_eq!(r.text("vim /etc/sudoers\r\n"), "vim /etc/sudoers\\r\\n");
    assert_eq!(
        r.text("root@ws: mysql -uroot -phunter2"),
        "root@ws: mysql -uroot -p[REDACTED]"
    );
}

#[test]
fn configured_rules_and_turning_builtins_off() {
    let cfg: RedactionConfig = toml::from_str(
        r#"
        builtin = false
        secret_options = ["--vault-pass"]
        patterns = ['pin=(?P<secret>\d+)']
        [[programs]]
        names = ["acmectl"]
        attached = ["-K"]
        separate = ["--key"]
        "#,
    )
    .unwrap();
    let r = Redactor::new(&cfg).unwrap();
    assert_eq!(
        line(&r, &["acmectl", "-Kabc", "--key", "def", "pin=1234"]),
        "acmectl -K[REDACTED] --key [REDACTED] pin=[REDACTED]"
    );
    assert_eq!(
        line(&r, &["x", "--vault-pass=v"]),
        "x --vault-pass=[REDACTED]"
    );
    // Built-ins are off: mysql's -p is kept.
    assert_eq!(line(&r, &["mysql", "-pX"]), "mysql -pX");
    // Program rules only after the program's name.
    assert_eq!(line(&r, &["other", "-Kabc"]), "other -Kabc");
}

#[test]
fn bad_rules_are_refused() {
    let bad_regex = RedactionConfig {
        patterns: vec!["(unclosed".into()],
        ..RedactionConfig::default()
    };
    assert!(matches!(
        Redactor::new(&bad_regex),
        Err(RedactError::Pattern { .. })
    ));
    let bad_program = RedactionConfig {
        programs: vec![ProgramRule {
            names: vec!["/usr/bin/x".into()],
            attached: vec![],
            separate: vec![],
            patterns: vec![],
        }],
        ..RedactionConfig::default()
    };
    assert!(matches!(
        Redactor::new(&bad_program),
        Err(RedactError::Invalid(_))
    ));
}

include!("cases.rs");

#[test]
fn the_secret_bearing_command_lines_of_issue_18() {
    let r = builtin();
    assert_eq!(ISSUE_18_CASES.len(), 30);
    let mut wrong = Vec::new();
    for (a, shown, secret) in ISSUE_18_CASES {
        let got = line(&r, a);
        assert!(!got.contains("S3cret"), "{secret} of {a:?} was kept: {got}");
        if got != *shown {
            wrong.push(format!("{a:?}\n   got {got}\n  want {shown}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The same command lines typed into a shell: `sh -c '<line>'`, each argument quoted as a
/// shell needs it, as a terminal (or sudo, or ssh) hands it on.
#[test]
fn the_issue_18_lines_inside_shell_scripts() {
    let r = builtin();
    for (a, shown, _) in ISSUE_18_CASES {
        let script = a.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ");
        let got = line(&r, &["sh", "-c", &script]);
        assert!(!got.contains("S3cret"), "{got}");
        // What was left readable is the same as in argv.
        for part in shown.split(REDACTED).flat_map(|p| p.split(['\'', ' '])) {
            assert!(got.contains(part), "{part:?} missing from {got}");
        }
        assert_eq!(r.text(&script), *shown, "as a title");
    }
}

#[test]
fn a_value_with_spaces_is_hidden_whole() {
    let r = builtin();
    // One argv argument: the whole value, whatever it holds.
    assert_eq!(
        line(&r, &["mysql", "--password=correct horse battery", "shop"]),
        "mysql --password=[REDACTED] shop"
    );
    assert_eq!(
        line(
            &r,
            &["gpg", "--passphrase", "correct horse battery", "-d", "f"]
        ),
        "gpg --passphrase [REDACTED] -d f"
    );
    assert_eq!(
        line(&r, &["env", "DB_PASSWORD=correct horse", "app"]),
        "env DB_PASSWORD=[REDACTED] app"
    );
    assert_eq!(
        line(&r, &["mysql", "-pcorrect horse", "shop"]),
        "mysql -p[REDACTED] shop"
    );
    // Quoted words inside a script, in each kind of quote; the rest of the script stays.
    assert_eq!(
        line(
            &r,
            &[
                "sh",
                "-c",
                "gpg --batch --passphrase 'a b c' -d backup.gpg > out"
            ]
        ),
        "sh -c 'gpg --batch --passphrase [REDACTED] -d backup.gpg > out'"
    );
    assert_eq!(
        line(
            &r,
            &[
                "bash",
                "-lc",
                "MYSQL_PWD=\"x y\" mysql -u root -e 'select 1'; ls"
            ]
        ),
        "bash -lc 'MYSQL_PWD=[REDACTED] mysql -u root -e '\\''select 1'\\''; ls'"
    );
    assert_eq!(
        r.text("sudo mysql -u root --password='correct horse' shop"),
        "sudo mysql -u root --password=[REDACTED] shop"
    );
    assert_eq!(
        r.text("mysql -u root -p\"correct horse\" shop"),
        "mysql -u root -p[REDACTED] shop"
    );
    assert_eq!(
        r.text("zip -P correct\\ horse out.zip f"),
        "zip -P [REDACTED] out.zip f"
    );
    assert_eq!(
        r.text("openssl enc -pass $'pass:a \\' b' -in f"),
        "openssl enc -pass $'pass:[REDACTED]' -in f"
    );
    // A whole quoted option: its quotes stay balanced.
    assert_eq!(
        r.text("tool '--token=a b' next"),
        "tool '--token=[REDACTED]' next"
    );
    // A stray apostrophe does not hide the rest of a title from the rules.
    assert_eq!(
        r.text("bob's shell: mysql --password hunter2"),
        "bob's shell: mysql --password [REDACTED]"
    );
}

#[test]
fn the_generic_option_rule() {
    for name in [
        "password",
        "passwd",
        "pass",
        "passphrase",
        "admin-password",
        "http-password",
        "storepass",
        "srcstorepass",
        "keypass",
        "client-secret",
        "clientSecret",
        "secret",
        "token",
        "auth-token",
        "accessToken",
        "api-key",
        "api_key",
        "apiKey",
        "access-key",
        "secret-key",
        "key",
        "pw",
        "db-pwd",
        "Djavax.net.ssl.keyStorePassword",
    ] {
        assert!(rules::secret_option_name(name), "{name} is secret");
    }
    for name in [
        "password-file",
        "password-stdin",
        "passphrase-fd",
        "passphrase-file",
        "token-ttl",
        "max-tokens",
        "keyring",
        "keyserver",
        "keyboard",
        "list-keys",
        "keyid",
        "keystore",
        "inkey",
        "no-password",
        "ask-become-pass",
        "askpass",
        "bypass",
        "passin",
        "user",
        "p",
    ] {
        assert!(!rules::secret_option_name(name), "{name} is not secret");
    }
}

#[test]
fn more_tools_and_forms() {
    let r = builtin();
    for (a, want) in [
        (
            &["smbclient", "//srv/c$", "-U", "DOM\\admin%pw"][..],
            "smbclient //srv/c$ -U 'DOM\\admin%[REDACTED]'",
        ),
        (
            &["openssl", "genrsa", "-passout", "pass:pw", "2048"],
            "openssl genrsa -passout pass:[REDACTED] 2048",
        ),
        (
            &["openssl", "enc", "-k", "pw", "-passin", "env:PW"],
            "openssl enc -k [REDACTED] -passin env:[REDACTED]",
        ),
        (&["curl", "-uadmin:pw", "h"], "curl -uadmin:[REDACTED] h"),
        (
            &["curl", "--user=admin:pw", "h"],
            "curl --user=admin:[REDACTED] h",
        ),
        (&["curl", "-u", "sk_live_1:", "h"], "curl -u [REDACTED]: h"),
        (
            &["curl", "--oauth2-bearer", "tok", "h"],
            "curl --oauth2-bearer [REDACTED] h",
        ),
        (
            &[
                "curl",
                "-H",
                "X-Vault-Token: s.1",
                "-H",
                "Proxy-Authorization: Basic eA==",
            ],
            "curl -H 'X-Vault-Token: [REDACTED]' -H 'Proxy-Authorization: Basic [REDACTED]'",
        ),
        (
            &["curl", "-d", "{\"user\":\"bob\",\"password\":\"pw\"}", "h"],
            "curl -d '{\"user\":\"bob\",\"password\":\"[REDACTED]\"}' h",
        ),
        (
            &["curl", "https://h/cb?state=1&access_token=tok&x=2"],
            "curl https://h/cb?state=1&access_token=[REDACTED]&x=2",
        ),
        (
            &[
                "git",
                "-c",
                "http.extraHeader=Authorization: Bearer tok",
                "pull",
            ],
            "git -c 'http.extraHeader=Authorization: Bearer [REDACTED]' pull",
        ),
        (
            &["mount", "-o", "username=bob,password=pw", "//s/x", "/mnt"],
            "mount -o username=bob,password=[REDACTED] //s/x /mnt",
        ),
        (
            &[
                "kubectl",
                "create",
                "secret",
                "generic",
                "db",
                "--from-literal=password=pw",
            ],
            "kubectl create secret generic db --from-literal=password=[REDACTED]",
        ),
        (
            &[
                "java",
                "-Djavax.net.ssl.keyStorePassword=pw",
                "-jar",
                "a.jar",
            ],
            "java -Djavax.net.ssl.keyStorePassword=[REDACTED] -jar a.jar",
        ),
        (
            &[
                "keytool",
                "-storepasswd",
                "-new",
                "pw2",
                "-storepass",
                "pw1",
            ],
            "keytool -storepasswd -new [REDACTED] -storepass [REDACTED]",
        ),
        (
            &[
                "ssh-keygen",
                "-p",
                "-P",
                "old",
                "-N",
                "new",
                "-f",
                "/root/.ssh/id_ed25519",
            ],
            "ssh-keygen -p -P [REDACTED] -N [REDACTED] -f /root/.ssh/id_ed25519",
        ),
        (
            &["ldappasswd", "-x", "-w", "bind", "-s", "new", "uid=bob"],
            "ldappasswd -x -w [REDACTED] -s [REDACTED] uid=bob",
        ),
        (
            &["htpasswd", "-bc", "-C", "12", "/etc/htpasswd", "bob", "pw"],
            "htpasswd -bc -C 12 /etc/htpasswd bob [REDACTED]",
        ),
        (
            &["htpasswd", "-nb", "bob", "pw"],
            "htpasswd -nb bob [REDACTED]",
        ),
        (
            &[
                "vault",
                "login",
                "-method=userpass",
                "username=bob",
                "password=pw",
            ],
            "vault login -method=userpass username=bob password=[REDACTED]",
        ),
        (
            &["docker", "login", "-u", "bob", "-ptok", "r.example"],
            "docker login -u bob -p[REDACTED] r.example",
        ),
        (
            &[
                "env",
                "GITHUB_TOKEN=t",
                "AWS_SECRET_ACCESS_KEY=k",
                "STRIPE_KEY=s",
                "app",
            ],
            "env GITHUB_TOKEN=[REDACTED] AWS_SECRET_ACCESS_KEY=[REDACTED] STRIPE_KEY=[REDACTED] app",
        ),
        (
            &["psql", "postgresql://app:pw@db/shop"],
            "psql postgresql://app:[REDACTED]@db/shop",
        ),
        (
            &["plink", "-pw", "pw", "admin@host"],
            "plink -pw [REDACTED] admin@host",
        ),
    ] {
        assert_eq!(line(&r, a), want, "{a:?}");
    }
    // A Windows command line (one string, read as a script).
    assert_eq!(
        r.text(r#""C:\Program Files\MySQL\bin\mysql.exe" -u root -pS3 shop"#),
        r#""C:\Program Files\MySQL\bin\mysql.exe" -u root -p[REDACTED] shop"#
    );
    // Several commands in one script: each program's rules stay within its command.
    assert_eq!(
        line(
            &r,
            &[
                "sh",
                "-c",
                "docker login -p tok r && docker run -p 8080:80 img"
            ]
        ),
        "sh -c 'docker login -p [REDACTED] r && docker run -p 8080:80 img'"
    );
    // A header whose value a title shows unquoted; Digest's parameters run on after commas.
    assert_eq!(
        r.text("curl -H Authorization: Digest username=\"a\", response=\"x\" https://h/"),
        "curl -H Authorization: Digest [REDACTED] [REDACTED] https://h/"
    );
    assert_eq!(
        r.text("curl -H X-Api-Key: k1 https://h/"),
        "curl -H X-Api-Key: [REDACTED] https://h/"
    );
}

#[test]
fn near_misses_are_left_alone() {
    let r = builtin();
    for a in [
        &["gpg", "--keyring", "/etc/apt/keyrings/x.gpg", "--list-keys"][..],
        &["ssh-keygen", "-t", "ed25519", "-f", "/root/.ssh/id_ed25519"],
        &["setxkbmap", "--keyboard", "us"],
        &[
            "docker",
            "login",
            "--password-stdin",
            "-u",
            "bob",
            "registry",
        ],
        &["docker", "run", "-p", "8080:80", "nginx"],
        &["psql", "--no-password", "-h", "db", "shop"],
        &["ansible-playbook", "--ask-become-pass", "site.yml"],
        &["gpg", "--passphrase-fd", "0", "-d", "f.gpg"],
        &["git", "clone", "ssh://git@github.com/acme/app.git"],
        &["ssh", "root@db.internal"],
        &["curl", "-H", "Content-Type: application/json", "https://h/"],
        &[
            "env",
            "MYSQL_PASSWORD_FILE=/run/secrets/db",
            "PWD=/root",
            "app",
        ],
        &["vault", "read", "secret/data/app"],
        &["kubectl", "get", "secrets", "-n", "prod"],
        &["openssl", "rsa", "-passin", "file:/root/pw", "-in", "k.pem"],
        &["curl", "-u", "alice", "https://h/"],
        &["sort", "-k", "2", "f"],
    ] {
        let want: Vec<String> = a.iter().map(|s| quote(s)).collect();
        assert_eq!(line(&r, a), want.join(" "), "{a:?} was altered");
    }
}
