//! What an operator can make a node do (`herd reboot|shutdown|identify|restart`,
//! `POST /api/v1/actions/:action`): the actions' names, what each says it does, the request the agent
//! hands to the card's root unit (`herd-action.service`), and the API's answer.

use serde::{Deserialize, Serialize};

/// One action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Restart the card (`systemctl reboot`: herd.service stops first, so the agent says goodbye).
    Reboot,
    /// Power the card off (`systemctl poweroff`), the same goodbye first.
    Shutdown,
    /// Blink the board's activity LED for [`IDENTIFY_SECONDS`], then put it back as it was.
    Identify,
    /// Restart the agent (`systemctl restart herd.service`): a goodbye, then a new generation.
    Restart,
}

/// How long `identify` blinks.
pub const IDENTIFY_SECONDS: u64 = 15;

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Reboot,
        Action::Shutdown,
        Action::Identify,
        Action::Restart,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reboot => "reboot",
            Action::Shutdown => "shutdown",
            Action::Identify => "identify",
            Action::Restart => "restart",
        }
    }

    /// The action named `name`, or an error that lists them.
    pub fn parse(name: &str) -> Result<Action, String> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| {
                format!(
                    "no action {:?}: the actions are reboot, shutdown, identify and restart",
                    name.chars().take(40).collect::<String>()
                )
            })
    }

    /// What the node says it does, once asked.
    pub fn doing(self) -> String {
        match self {
            Action::Reboot => {
                "rebooting: its agent says goodbye to its peers, then the card restarts".into()
            }
            Action::Shutdown => {
                "shutting down: its agent says goodbye to its peers, then the card powers off; \
                 it stays off until its power is cycled"
                    .into()
            }
            Action::Identify => format!(
                "blinking its activity LED for {IDENTIFY_SECONDS} s, then putting it back as it was"
            ),
            Action::Restart => {
                "restarting its agent: a goodbye, then back with a new generation".into()
            }
        }
    }
}

/// What the agent hands to `herd-action.service` (its state directory's `action/request.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: Action,
    /// The address that asked, for the root unit's log.
    pub from: String,
    /// When, in seconds since 1970.
    pub at: u64,
}

/// `POST /api/v1/actions/:action`'s answer (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionView {
    pub node: String,
    pub name: String,
    pub action: Action,
    pub said: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_back_and_others_are_refused_with_the_list() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Ok(a));
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::json!(a.as_str())
            );
        }
        let e = Action::parse("format-card").unwrap_err();
        assert!(
            e.contains("\"format-card\"") && e.contains("reboot, shutdown"),
            "{e}"
        );
    }
}
