//! The users file as the admin commands write it: the same format `raw.rs` reads, with fields
//! in a fixed order, two-space indentation, and optional fields left out when they hold their
//! default. Nothing here checks anything: [`super::UsersFile::from_users`] parses the text back
//! with the loader's rules before it is ever written.

use std::collections::BTreeMap;

use serde::Serialize;

use super::keys::AuthorizedKey;
use super::limits::format_expiry;
use super::User;

#[derive(Serialize)]
struct OutFile<'a> {
    users: Vec<OutUser<'a>>,
}

/// One user entry, fields in the order of `docs/users.md`.
#[derive(Serialize)]
struct OutUser<'a> {
    username: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    public_keys: Vec<&'a str>,
    key_prefix: &'a str,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    permissions: Option<BTreeMap<&'a str, Vec<&'static str>>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_ips: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_sessions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

impl<'a> From<&'a User> for OutUser<'a> {
    fn from(user: &'a User) -> Self {
        OutUser {
            username: &user.username,
            password: user.password.as_deref(),
            public_keys: user.public_keys.iter().map(AuthorizedKey::line).collect(),
            key_prefix: &user.key_prefix,
            enabled: user.enabled,
            permissions: (!user.permissions.is_default()).then(|| {
                user.permissions
                    .entries()
                    .map(|(path, set)| (path, set.names()))
                    .collect()
            }),
            allowed_ips: user.allowed_ips.iter().map(ToString::to_string).collect(),
            max_sessions: user.max_sessions,
            expires_at: user.expires_at.as_ref().map(format_expiry),
        }
    }
}

/// `users` as users-file JSON, ending with a newline.
pub(super) fn to_json(users: &[User]) -> String {
    let file = OutFile {
        users: users.iter().map(OutUser::from).collect(),
    };
    // Serializing plain strings, numbers and maps cannot fail.
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use crate::users::UsersFile;

    #[test]
    fn round_trips_every_field() {
        let json = r#"{
  "users": [
    {
      "username": "full",
      "password": "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
      "public_keys": [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIFbu/cWZHRfrWTCIft+VBlVnuhBS1uf9hTja8TpqBxW alice@laptop"
      ],
      "key_prefix": "users/full/",
      "enabled": false,
      "permissions": {
        "/": [
          "list",
          "download"
        ],
        "/inbox": [
          "*"
        ],
        "/secret": []
      },
      "allowed_ips": [
        "10.0.0.0/8",
        "2001:db8::/32"
      ],
      "max_sessions": 2,
      "expires_at": "2030-01-01T00:00:00Z"
    },
    {
      "username": "plain",
      "public_keys": [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMYXG1bbIOYA6M3cauIVEvQgyrqsg293LU4GF+O4TNdH bob@desk"
      ],
      "key_prefix": "users/plain/",
      "enabled": true
    }
  ]
}
"#;
        let file = UsersFile::parse(json).unwrap();
        assert_eq!(file.to_json(), json);
        let (again, text) = UsersFile::from_users(file.users()).unwrap();
        assert_eq!(again.users(), file.users());
        assert_eq!(text, json);
    }
}
