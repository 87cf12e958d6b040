//! The users file through its public API: loading, every validation rule, key matching and
//! password checks.

use std::path::Path;

use russh::keys::PublicKey;
use s3sftp::users::{
    hash_password, verify_password, verify_password_or_dummy, Permission, PermissionSet, Problem,
    UsersError, UsersFile, HASH_PASSWORD_COMMAND,
};
use serde_json::{json, Value};

/// The hash of "demo" in `users.example.json`.
const DEMO_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$RiPd4CqIXq3Z1WILePKMyw$m9ZmJ9lopPbVYv0zlAscUQCWflqKmefPI97jjGguHck";
const ALICE_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW alice@laptop";
const BOB_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMYXG1bbIOYA6M3cauIVEvQgyrqsg293LU4GF+O4TNdH bob@desk";
const CAROL_RSA_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCjQRvuuTIxetdQxekgeXQfrgJ78E7iqNBE8yT7qqkHc+00Xd1JAm0uKKqnm4otSco154qDIqve3c/0SZDAYT5b8gEIwuW1V3rmRvHTo+n5C/WCudAidqzJEG6djQRZbdjjZkUuqhjjg1y6tzwlABVLNsJaPm/TNwA173hLjSEnCqQYx8infE9jOj+KBxXdKPJhGjG09QONGdWMJDtwV3kFqTuLl45dWEGzz5gZvnOYhKe2hwRJQuOCMR1yMt16aqJ68mN1Jw6c7l3sqFEHRVq0WyXA7Yu60wFQMay2IUXM/wzFDwcl5LyQFhjsd/X4qAJDyYnwzUVpBKo1oLKmAU83 carol rsa";
const DAVE_ECDSA_KEY: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBMZzuIVyIEfhoVqgx30i2PPFzL/8eqysWt6I9Aa9NMNQdjCXpSEmiF7MLOsuJeE1TesnyIoHbHYSppyiWQaYWxo= dave";

fn example_path() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/users.example.json"))
}

/// A valid user entry to start from; tests override fields.
fn user(name: &str) -> Value {
    json!({
        "username": name,
        "public_keys": [ALICE_KEY],
        "key_prefix": format!("users/{name}/"),
    })
}

fn with(mut entry: Value, field: &str, value: Value) -> Value {
    entry[field] = value;
    entry
}

fn without(mut entry: Value, field: &str) -> Value {
    if let Some(object) = entry.as_object_mut() {
        object.remove(field);
    }
    entry
}

fn file(users: Vec<Value>) -> String {
    json!({ "users": users }).to_string()
}

fn problems_of(json: &str) -> Vec<Problem> {
    match UsersFile::parse(json) {
        Err(UsersError::Invalid { problems, path }) => {
            assert_eq!(path, None);
            problems
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// The problems of a file holding just `entry`, as the lines an administrator reads.
fn messages_for(entry: Value) -> Vec<String> {
    problems_of(&file(vec![entry]))
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn single_message(entry: Value) -> String {
    let messages = messages_for(entry);
    assert_eq!(messages.len(), 1, "{messages:#?}");
    messages[0].clone()
}

#[test]
fn example_file_loads_and_demo_password_verifies() {
    let users = UsersFile::load(example_path()).unwrap();
    let names: Vec<&str> = users.users().iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["demo", "reader", "dropbox", "carol"]);
    let demo = users.get("demo").unwrap();
    assert_eq!(demo.username, "demo");
    assert_eq!(demo.key_prefix, "users/demo/");
    assert!(demo.enabled);
    assert!(demo.public_keys.is_empty());
    assert_eq!(demo.password.as_deref(), Some(DEMO_HASH));
    assert!(verify_password_or_dummy(Some(demo), "demo"));
    assert!(!verify_password_or_dummy(Some(demo), "Demo"));
    assert!(!verify_password_or_dummy(Some(demo), ""));
    assert!(demo.permissions.is_default());
}

#[test]
fn example_permission_users() {
    use Permission::*;
    let users = UsersFile::load(example_path()).unwrap();
    for name in ["reader", "dropbox", "carol"] {
        let user = users.get(name).unwrap();
        assert!(
            verify_password_or_dummy(Some(user), name),
            "{name}'s password is its name"
        );
        assert_eq!(user.key_prefix, format!("users/{name}/"));
    }
    let reader = users.get("reader").unwrap();
    assert_eq!(
        reader.permissions_for("/any/file"),
        PermissionSet::of(&[List, Download])
    );
    let dropbox = users.get("dropbox").unwrap();
    let drop = dropbox.permissions_for("/in/file");
    assert_eq!(drop, PermissionSet::of(&[Upload, CreateDirs]));
    for denied in [List, Download, Overwrite, Delete, Rename] {
        assert!(!drop.contains(denied), "{denied}");
    }
    let carol = users.get("carol").unwrap();
    assert_eq!(carol.permissions_for("/notes/a.txt"), PermissionSet::ALL);
    assert_eq!(
        carol.permissions_for("/reference"),
        PermissionSet::of(&[List, Download])
    );
    assert_eq!(
        carol.permissions_for("/reference/x/y.pdf"),
        PermissionSet::of(&[List, Download])
    );
    assert_eq!(carol.permissions_for("/references/x"), PermissionSet::ALL);
}

#[test]
fn defaults_and_lookup() {
    let json = r#"{"users": [
        {"username": "a", "public_keys": [], "password": "PLACEHOLDER", "key_prefix": "a/"},
        {"username": "b", "password": null, "public_keys": ["BOB"], "key_prefix": "b/", "enabled": false}
    ]}"#
    .replace("PLACEHOLDER", DEMO_HASH)
    .replace("BOB", BOB_KEY);
    let users = UsersFile::parse(&json).unwrap();
    let names: Vec<&str> = users.users().iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let a = users.get("a").unwrap();
    assert!(a.enabled, "enabled defaults to true");
    assert!(a.public_keys.is_empty());
    let b = users.get("b").unwrap();
    assert!(!b.enabled);
    assert_eq!(b.password, None);
    assert_eq!(b.public_keys.len(), 1);
    assert_eq!(b.public_keys[0].line(), BOB_KEY);
    assert!(users.get("A").is_none(), "lookup is case-sensitive");
    assert!(users.get("c").is_none());
}

#[test]
fn empty_users_list_is_valid() {
    let users = UsersFile::parse(r#"{"users": []}"#).unwrap();
    assert!(users.users().is_empty());
    assert!(users.get("demo").is_none());
}

#[test]
fn all_key_types_parse() {
    let entry = with(
        user("k"),
        "public_keys",
        json!([ALICE_KEY, CAROL_RSA_KEY, DAVE_ECDSA_KEY]),
    );
    let users = UsersFile::parse(&file(vec![entry])).unwrap();
    let k = users.get("k").unwrap();
    assert_eq!(k.public_keys.len(), 3);
    assert!(k.has_key(&PublicKey::from_openssh(DAVE_ECDSA_KEY).unwrap()));
    assert!(k.has_key(&PublicKey::from_openssh(CAROL_RSA_KEY).unwrap()));
}

#[test]
fn key_matching_ignores_comments() {
    let users = UsersFile::parse(&file(vec![user("alice")])).unwrap();
    let alice = users.get("alice").unwrap();
    let mut offered = PublicKey::from_openssh(ALICE_KEY).unwrap();
    offered.set_comment("");
    assert!(alice.has_key(&offered));
    offered.set_comment("a different comment");
    assert!(alice.has_key(&offered));
    let bob = PublicKey::from_openssh(BOB_KEY).unwrap();
    assert!(!alice.has_key(&bob));
}

#[test]
fn verify_password_or_dummy_is_false_without_a_usable_user() {
    let json = file(vec![
        with(user("nopass"), "password", Value::Null),
        with(
            with(user("off"), "password", json!(DEMO_HASH)),
            "enabled",
            json!(false),
        ),
    ]);
    let users = UsersFile::parse(&json).unwrap();
    assert!(!verify_password_or_dummy(None, "demo"));
    assert!(!verify_password_or_dummy(users.get("missing"), "demo"));
    assert!(!verify_password_or_dummy(users.get("nopass"), "demo"));
    assert!(!verify_password_or_dummy(users.get("off"), "demo"));
    // The disabled user's hash is fine: only `enabled` stops it.
    assert!(verify_password(DEMO_HASH, "demo"));
}

#[test]
fn hash_password_output_is_accepted_by_the_file() {
    let phc = hash_password("s3cret pass").unwrap();
    let entry = with(without(user("h"), "public_keys"), "password", json!(phc));
    let users = UsersFile::parse(&file(vec![entry])).unwrap();
    assert!(verify_password_or_dummy(users.get("h"), "s3cret pass"));
    assert!(!verify_password_or_dummy(users.get("h"), "s3cret pas"));
}

// ---- one test per rule ----

#[test]
fn username_rules() {
    assert_eq!(
        single_message(with(user("x"), "username", json!(""))),
        "user #1: username is empty"
    );
    assert_eq!(
        single_message(without(user("x"), "username")),
        "user #1: username is missing"
    );
    let long = "a".repeat(65);
    assert_eq!(
        single_message(with(user("x"), "username", json!(long))),
        format!("user \"{long}\": username is 65 characters long; at most 64 are allowed")
    );
    assert_eq!(
        single_message(with(user("x"), "username", json!("bob smith"))),
        "user \"bob smith\": username may contain only ASCII letters, digits and . _ - @ (found \" \")"
    );
    assert!(UsersFile::parse(&file(vec![user("a.b_c-d@e.f9")])).is_ok());
}

#[test]
fn usernames_must_be_unique() {
    let json = file(vec![
        user("bob"),
        user("alice"),
        with(user("bob"), "key_prefix", json!("other/bob/")),
    ]);
    let problems = problems_of(&json);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert_eq!(problems[0].field, "username");
    assert_eq!(
        problems[0].to_string(),
        "user \"bob\": username is used by 2 entries (#1, #3); usernames must be unique"
    );
}

#[test]
fn key_prefix_rules() {
    let bad = |prefix: &str| single_message(with(user("bob"), "key_prefix", json!(prefix)));
    assert_eq!(
        bad("users/bob"),
        "user \"bob\": key_prefix must end with \"/\" (got \"users/bob\")"
    );
    assert!(bad("").starts_with("user \"bob\": key_prefix is empty"));
    assert_eq!(
        bad("/users/bob/"),
        "user \"bob\": key_prefix must not start with \"/\" (got \"/users/bob/\"); S3 keys have no leading slash"
    );
    assert_eq!(
        bad("users//bob/"),
        "user \"bob\": key_prefix must not contain empty segments (\"//\") (got \"users//bob/\")"
    );
    assert_eq!(
        bad("users/../bob/"),
        "user \"bob\": key_prefix must not contain \".\" or \"..\" segments (got \"users/../bob/\")"
    );
    assert!(bad("users/./bob/").contains("\".\" or \"..\" segments"));
    assert!(bad("users\\bob/").contains("key_prefix must not contain a backslash"));
    assert_eq!(
        bad("users/b\0b/"),
        "user \"bob\": key_prefix must not contain NUL or other control characters (got \"users/b\\0b/\")"
    );
    assert!(bad("users/b\tb/").contains("control characters"));
    assert_eq!(
        bad(&format!("{}/", "x".repeat(600))),
        "user \"bob\": key_prefix is 601 bytes long; at most 512 are allowed"
    );
    assert!(single_message(without(user("bob"), "key_prefix"))
        .starts_with("user \"bob\": key_prefix is missing"));
}

#[test]
fn overlapping_prefixes_name_both_users() {
    let json = file(vec![
        with(user("a"), "key_prefix", json!("users/a/")),
        with(user("nested"), "key_prefix", json!("users/a/b/")),
        with(user("twin"), "key_prefix", json!("users/a/")),
        // Not an overlap: "users/ab/" is a sibling of "users/a/".
        with(user("sibling"), "key_prefix", json!("users/ab/")),
    ]);
    let messages: Vec<String> = problems_of(&json).iter().map(ToString::to_string).collect();
    assert_eq!(
        messages,
        [
            "user \"twin\": key_prefix \"users/a/\" is also the key_prefix of user \"a\"; each user needs a prefix of its own",
            "user \"nested\": key_prefix \"users/a/b/\" lies inside user \"a\"'s key_prefix \"users/a/\", so user \"a\" could see and change this user's files; give each user a prefix that is not inside another's",
            "user \"nested\": key_prefix \"users/a/b/\" lies inside user \"twin\"'s key_prefix \"users/a/\", so user \"twin\" could see and change this user's files; give each user a prefix that is not inside another's",
        ]
    );
}

#[test]
fn plain_text_password_is_refused_with_how_to_hash() {
    let message = single_message(with(user("bob"), "password", json!("hunter2")));
    assert_eq!(
        message,
        format!("user \"bob\": password looks like plain text; the users file stores only password hashes: run `s3sftp users passwd bob` to set a new password, or `{HASH_PASSWORD_COMMAND}` and paste its output")
    );
    assert_eq!(HASH_PASSWORD_COMMAND, "s3sftp users hash-password");
    assert!(!message.contains("hunter2"));
}

#[test]
fn broken_or_foreign_hashes_are_refused() {
    let bad = |phc: &str| single_message(with(user("bob"), "password", json!(phc)));
    assert!(bad("$argon2id$v=19$m=19456,t=2,p=1$%%%")
        .starts_with("user \"bob\": password is not a valid PHC hash string"));
    // bcrypt is accepted for migrations (cost 12 is within the limit of 16).
    let bcrypt = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
    assert!(UsersFile::parse(&file(vec![with(user("b"), "password", json!(bcrypt))])).is_ok());
    assert!(bad(&bcrypt[..50]).contains("password is not a valid bcrypt hash"));
    assert!(bad(
        "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E"
    )
    .contains("password is a \"scrypt\" hash, which s3sftp does not accept; the accepted kinds are argon2"));
    assert!(bad("$1$saltsalt$hash").contains("\"1\" hash"));
    assert!(bad("").contains("password is empty"));
    assert!(bad(&DEMO_HASH.replace("t=2", "t=1000")).contains("too costly"));
    // argon2i and argon2d are accepted.
    let argon2i = "$argon2i$v=19$m=1024,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$gKlHmyFv/c/nhfZrcCqYng8G8zo12ydAH3qsUNcd6H8";
    let ok = with(user("i"), "password", json!(argon2i));
    assert!(UsersFile::parse(&file(vec![ok])).is_ok());
}

#[test]
fn public_key_rules() {
    let bad =
        |line: &str| single_message(with(user("bob"), "public_keys", json!([ALICE_KEY, line])));
    assert!(bad("ssh-ed25519 AAAAnot-a-key bob")
        .starts_with("user \"bob\": public_keys[1] does not parse as an OpenSSH public key"));
    assert_eq!(bad(""), "user \"bob\": public_keys[1] is empty");
    assert!(bad(&format!("no-pty,from=\"10.0.0.0/8\" {BOB_KEY}")).starts_with(
        "user \"bob\": public_keys[1] starts with authorized_keys options (\"no-pty,from=\\\"10.0.0.0/8\\\"\"), which s3sftp does not support"
    ));
    assert!(bad(&format!("{BOB_KEY}\n{ALICE_KEY}")).contains("control character"));
    let cert = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIK8eQA0BJjSsQlj9cS46FCthJD1QOPT+6munvGciw9Us alice";
    assert!(bad(cert).contains("is an OpenSSH certificate"));
    // Surrounding blanks are tolerated.
    let padded = with(user("p"), "public_keys", json!([format!("  {BOB_KEY}  ")]));
    assert!(UsersFile::parse(&file(vec![padded])).is_ok());
}

#[test]
fn a_user_needs_a_way_to_log_in() {
    let expected = format!("user \"bob\": has neither a password nor public_keys, so it could never log in; add public_keys, or a password hash made with `{HASH_PASSWORD_COMMAND}`");
    assert_eq!(
        single_message(without(user("bob"), "public_keys")),
        expected
    );
    assert_eq!(
        single_message(with(user("bob"), "public_keys", json!([]))),
        expected
    );
    // Still an error when disabled: such an entry is surely a mistake.
    let disabled = with(without(user("bob"), "public_keys"), "enabled", json!(false));
    assert_eq!(single_message(disabled), expected);
}

#[test]
fn unknown_duplicate_and_mistyped_fields() {
    let typo = with(user("bob"), "pasword", json!("x"));
    assert_eq!(
        single_message(typo),
        "user \"bob\": unknown field \"pasword\" (did you mean \"password\"?); the fields are username, password, public_keys, key_prefix, enabled, permissions, allowed_ips, max_sessions, expires_at"
    );
    let json = r#"{"users": [{"username": "bob", "key_prefix": "users/a/", "key_prefix": "users/bob/", "public_keys": []}]}"#;
    let messages: Vec<String> = problems_of(json).iter().map(ToString::to_string).collect();
    assert_eq!(
        messages[0],
        "user \"bob\": key_prefix is given 2 times in this entry; keep one"
    );
    // Written out, not built with json!, whose objects sort their keys.
    let mistyped = r#"{"users": [{"username": "bob", "public_keys": "one key", "key_prefix": "b/", "enabled": "yes"}]}"#;
    let problems = problems_of(mistyped);
    let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
    assert_eq!(fields, ["public_keys", "enabled"], "{problems:#?}");
    assert!(problems[1]
        .to_string()
        .starts_with("user \"bob\": enabled: invalid type: string \"yes\""));
}

#[test]
fn every_problem_is_listed_together() {
    let json = file(vec![
        with(user("good"), "key_prefix", json!("shared/")),
        with(
            with(user("bob"), "key_prefix", json!("users/bob")),
            "password",
            json!("plain"),
        ),
        with(user("bad name"), "extra", json!(1)),
        with(user("inner"), "key_prefix", json!("shared/inner/")),
        without(with(user(""), "key_prefix", json!("/abs")), "public_keys"),
    ]);
    let err = UsersFile::parse(&json).unwrap_err();
    let UsersError::Invalid { problems, .. } = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    let tags: Vec<(usize, &str)> = problems.iter().map(|p| (p.entry, p.field)).collect();
    assert_eq!(
        tags,
        [
            (2, "password"),
            (2, "key_prefix"),
            (3, "entry"),
            (3, "username"),
            (5, "username"),
            (5, "password"),
            (5, "key_prefix"),
            (5, "key_prefix"),
            (4, "key_prefix"),
        ],
        "{problems:#?}"
    );
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "users file has 9 problems:");
    assert_eq!(lines.len(), 10, "{text}");
    assert!(
        lines[2].contains("user \"bob\": key_prefix must end with \"/\""),
        "{text}"
    );
    assert!(
        lines[8].starts_with("  user #5: key_prefix must end with \"/\""),
        "{text}"
    );
    assert!(
        lines[9]
            .contains("user \"inner\": key_prefix \"shared/inner/\" lies inside user \"good\"'s"),
        "{text}"
    );
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let err = UsersFile::load(&missing).unwrap_err();
    assert!(matches!(err, UsersError::Read { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with(&format!("cannot read users file {}", missing.display())));

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"users\": [\n  {\"username\": \"a\",}\n]}").unwrap();
    let err = UsersFile::load(&broken).unwrap_err();
    assert!(matches!(err, UsersError::Json { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("users file {}: ", broken.display())),
        "{text}"
    );
    assert!(text.contains("line 2"), "{text}");

    let invalid = dir.path().join("invalid.json");
    std::fs::write(
        &invalid,
        file(vec![with(user("a"), "key_prefix", json!("a"))]),
    )
    .unwrap();
    let err = UsersFile::load(&invalid).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "users file {} has 1 problem:\n  user \"a\": key_prefix must end with \"/\" (got \"a\")",
            invalid.display()
        )
    );
}

#[test]
fn top_level_shape_errors() {
    let err = UsersFile::parse(r#"{"user": []}"#).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("users file: unknown field `user`, expected `users`"),
        "{err}"
    );
    let err = UsersFile::parse(r#"{}"#).unwrap_err();
    assert!(err.to_string().contains("missing field `users`"), "{err}");
    let err = UsersFile::parse(r#"{"users": ["bob"]}"#).unwrap_err();
    assert!(err.to_string().contains("expected a user object"), "{err}");
}

#[test]
fn debug_output_hides_the_hash() {
    let users = UsersFile::load(example_path()).unwrap();
    let debug = format!("{users:?}");
    assert!(debug.contains("demo"));
    assert!(!debug.contains("argon2id$"), "{debug}");
}

#[test]
fn examples_in_the_docs_are_valid() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/users.md")).unwrap();
    let blocks: Vec<&str> = docs
        .split("```json\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert_eq!(
        blocks.len(),
        3,
        "expected the whole-file example, then the alice and carol entries"
    );
    let whole = UsersFile::parse(blocks[0]).unwrap();
    let on_disk = UsersFile::load(example_path()).unwrap();
    assert_eq!(
        whole.users(),
        on_disk.users(),
        "docs and users.example.json differ"
    );
    let alice = UsersFile::parse(&format!("{{\"users\": [{}]}}", blocks[1])).unwrap();
    let alice = alice.get("alice").unwrap();
    assert_eq!(alice.public_keys.len(), 2);
    assert_eq!(alice.key_prefix, "teams/sales/alice/");
    assert_eq!(alice.max_sessions, Some(2));
    assert_eq!(alice.allowed_ips.len(), 2);
    let carol = UsersFile::parse(&format!("{{\"users\": [{}]}}", blocks[2])).unwrap();
    let carol = carol.get("carol").unwrap();
    assert_eq!(
        carol.permissions_for("/reference/drafts/x"),
        PermissionSet::ALL
    );
    assert_eq!(
        carol.permissions_for("/reference/y").to_string(),
        "list,download"
    );
    // The example file is in the form the admin commands write.
    let text = std::fs::read_to_string(example_path()).unwrap();
    assert_eq!(on_disk.to_json(), text);
}

#[test]
fn permissions_and_limits_load() {
    let entry = json!({
        "username": "p",
        "public_keys": [ALICE_KEY],
        "key_prefix": "p/",
        "permissions": {"/": ["list", "download"], "/inbox": ["*"], "/inbox/locked": []},
        "allowed_ips": ["10.0.0.0/8", "2001:db8::/32"],
        "max_sessions": 3,
        "expires_at": "2030-06-30T12:00:00+02:00"
    });
    let users = UsersFile::parse(&file(vec![entry])).unwrap();
    let p = users.get("p").unwrap();
    assert_eq!(
        p.permissions_for("/a.txt"),
        PermissionSet::of(&[Permission::List, Permission::Download])
    );
    assert_eq!(p.permissions_for("/inbox/x/y"), PermissionSet::ALL);
    assert_eq!(p.permissions_for("/inbox/locked/z"), PermissionSet::NONE);
    assert!(p.ip_allowed("10.9.8.7".parse().unwrap()));
    assert!(!p.ip_allowed("192.0.2.1".parse().unwrap()));
    assert_eq!(p.max_sessions, Some(3));
    let at = chrono::DateTime::parse_from_rfc3339("2030-06-30T10:00:00Z").unwrap();
    assert!(p.is_expired(at.with_timezone(&chrono::Utc)));
    assert!(!p.is_expired((at - chrono::Duration::seconds(1)).with_timezone(&chrono::Utc)));

    // Defaults: everything allowed, any address, no limit, no expiry.
    let users = UsersFile::parse(&file(vec![user("d")])).unwrap();
    let d = users.get("d").unwrap();
    assert!(d.permissions.is_default());
    assert_eq!(d.permissions_for("/x"), PermissionSet::ALL);
    assert!(d.ip_allowed("192.0.2.1".parse().unwrap()));
    assert_eq!((d.max_sessions, d.expires_at), (None, None));
}

#[test]
fn permissions_and_limits_rules_name_user_and_field() {
    let bad = |field: &str, value: Value| {
        let problems = problems_of(&file(vec![with(user("bob"), field, value)]));
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].field, field);
        problems[0].to_string()
    };
    assert_eq!(
        bad("permissions", json!({"/": ["list", "write"]})),
        "user \"bob\": permissions \"/\": unknown permission \"write\"; the permissions are list, download, upload, overwrite, delete, rename, create_dirs, or \"*\" for all"
    );
    assert!(bad("permissions", json!({"/in": ["*"]}))
        .starts_with("user \"bob\": permissions has no entry for \"/\""));
    assert!(bad("permissions", json!({"/": ["*"], "in": ["*"]}))
        .contains("path \"in\" must start with \"/\""));
    assert!(bad("permissions", json!({"/": ["*"], "/in/": ["*"]})).contains("write \"/in\""));
    assert!(bad("permissions", json!({"/": "*"}))
        .starts_with("user \"bob\": permissions: invalid type"));
    assert_eq!(
        bad("allowed_ips", json!(["10.0.0.0/8", "10.0.0.300/8"])),
        "user \"bob\": allowed_ips[1] \"10.0.0.300/8\" is not a network in CIDR notation such as \"192.0.2.0/24\" or \"2001:db8::/32\""
    );
    assert!(bad("allowed_ips", json!(["192.0.2.7"])).contains("write \"192.0.2.7/32\""));
    assert!(
        bad("allowed_ips", json!(["10.1.0.0/8"])).contains("write the network as \"10.0.0.0/8\"")
    );
    assert!(bad("max_sessions", json!(0)).starts_with("user \"bob\": max_sessions is 0"));
    assert!(bad("max_sessions", json!(-1)).starts_with("user \"bob\": max_sessions: invalid value"));
    assert!(bad("expires_at", json!("tomorrow"))
        .starts_with("user \"bob\": expires_at \"tomorrow\" is not an RFC 3339 date"));
}
