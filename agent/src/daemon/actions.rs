//! The agent's side of `herd reboot|shutdown|identify|restart`: it checks what it can (an LED to blink,
//! no action already under way), logs who asked, and hands the action to the card's root unit by writing
//! `action/request.json` in its state directory, which `herd-action.path` watches (the root side is
//! [`crate::actuator`]). The agent itself gains no privilege.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::actuator;
use crate::model::actions::{Action, ActionRequest};

/// A request the root unit has not taken after this long is taken to be lost (no `herd-action.path` on
/// this card, say) and replaced.
const STALE: Duration = Duration::from_secs(60);

/// Why an action is not handed over.
#[derive(Debug)]
pub enum Refused {
    /// `identify` on a board without an activity LED.
    NoLed,
    /// An earlier request is still waiting for the root unit.
    UnderWay(String),
    Failed(String),
}

/// Where this agent hands its actions over.
pub struct Actions {
    request: PathBuf,
    leds: PathBuf,
}

impl Actions {
    pub fn new(state_dir: &Path) -> Actions {
        Actions {
            request: state_dir.join(actuator::REQUEST),
            leds: PathBuf::from(actuator::LEDS),
        }
    }

    /// Hands `action`, asked from `from`, to the root unit.
    pub fn ask(&self, action: Action, from: IpAddr) -> Result<(), Refused> {
        if action == Action::Identify && actuator::activity_led(&self.leds).is_none() {
            return Err(Refused::NoLed);
        }
        if let Ok(meta) = std::fs::symlink_metadata(&self.request) {
            let age = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .unwrap_or(Duration::ZERO);
            if age < STALE {
                let waiting = std::fs::read_to_string(&self.request)
                    .ok()
                    .and_then(|t| serde_json::from_str::<ActionRequest>(&t).ok())
                    .map_or("an action".to_string(), |r| {
                        format!("{} (asked by {})", r.action.as_str(), r.from)
                    });
                return Err(Refused::UnderWay(format!(
                    "{waiting} is still waiting for this card's herd-action.service ({} s ago); try \
                     again in a minute",
                    age.as_secs()
                )));
            }
            tracing::warn!(
                "an action request was never taken in {} s: is herd-action.path enabled? Replacing it",
                age.as_secs()
            );
        }
        let request = ActionRequest {
            action,
            from: from.to_string(),
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let dir = self.request.parent().expect("a directory");
        std::fs::create_dir_all(dir)
            .and_then(|()| {
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            })
            .map_err(|e| Refused::Failed(format!("cannot make {}: {e}", dir.display())))?;
        let text = serde_json::to_string(&request).expect("a request serialises");
        crate::files::write_private(&self.request, &text)
            .map_err(|e| Refused::Failed(format!("{e:#}")))?;
        tracing::warn!(from = %from, action = action.as_str(), "action asked; handed to herd-action.service");
        Ok(())
    }
}
