//! `[notify]` and its `[[notify.webhook]]` tables.

use super::*;

pub(super) fn notify(r: &mut Report, item: &Item, base: &Path) -> NotifySettings {
    let mut settings = NotifySettings::default();
    let Some(table) = item.table(r) else {
        return settings;
    };
    let f = NotifyKeys::of(r, table);
    let Some(list) = f.webhook.as_ref() else {
        return settings;
    };
    let DeValue::Array(hooks) = list.value() else {
        r.error(
            list.value_at(),
            format!(
                "webhook must be a list of tables, one [[notify.webhook]] per URL, found {}",
                type_name(list.value())
            ),
        );
        return settings;
    };
    for (index, hook) in hooks.iter().enumerate() {
        let hook = list.element(index, hook);
        if let Some(w) = webhook(r, &hook, base) {
            settings.webhooks.push(w);
        }
    }
    settings
}

fn webhook(r: &mut Report, item: &Item, base: &Path) -> Option<Webhook> {
    let DeValue::Table(table) = item.value() else {
        r.error(
            item.value_at(),
            format!(
                "each webhook must be a table ([[notify.webhook]] with url = \"...\"), found {}",
                type_name(item.value())
            ),
        );
        return None;
    };
    let f = WebhookKeys::of(r, table);
    let url = match f.url.as_ref() {
        Some(i) => i.webhook_url(r),
        None => {
            r.error(
                item.value_at(),
                "missing url; add e.g. url = \"https://hooks.example.com/bgsched\"",
            );
            None
        }
    };
    let events = f
        .events
        .as_ref()
        .map_or(Some(Event::defaults()), |i| i.events(r));
    let secret = f
        .secret_file
        .as_ref()
        .map_or(Some(None), |i| i.password_file(r, base).map(Some));
    let timeout = f
        .timeout
        .as_ref()
        .map_or(Some(DEFAULT_WEBHOOK_TIMEOUT), |i| i.positive_duration(r));
    let retries = f
        .retries
        .as_ref()
        .map_or(Some(DEFAULT_WEBHOOK_RETRIES), |i| i.retries(r));
    Some(Webhook {
        url: url?,
        events: events?,
        secret: secret?,
        timeout: timeout?,
        retries: retries?,
    })
}

impl Item<'_, '_> {
    /// An `http://` or `https://` URL with a host.
    pub(super) fn webhook_url(&self, r: &mut Report) -> Option<String> {
        let written = self.str(r)?;
        // Not quoted back: a webhook URL's path often holds its token, and
        // this message reaches logs (a rejected reload).
        let problem = match reqwest::Url::parse(written) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                format!(
                    "has the scheme {}; only http and https are sent to",
                    quoted(url.scheme())
                )
            }
            Ok(url) if url.host_str().is_none_or(str::is_empty) => "has no host".to_string(),
            Ok(_) => return Some(written.to_string()),
            Err(e) => format!("is not a URL ({e})"),
        };
        r.error(
            self.value_at(),
            format!(
                "{} {problem}; write e.g. \"https://hooks.example.com/bgsched\"",
                self.label
            ),
        );
        None
    }

    /// A non-empty list of event names.
    pub(super) fn events(&self, r: &mut Report) -> Option<BTreeSet<Event>> {
        let names = || {
            Event::ALL
                .iter()
                .map(|e| e.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let array = self.non_empty_array(
            r,
            "a list of event names like [\"failed\", \"recovered\"]",
            |_| "",
            || {
                format!(
                    "{} must not be empty; name some of: {}",
                    self.label,
                    names()
                )
            },
        )?;
        let mut events = Some(BTreeSet::new());
        for (index, element) in array.iter().enumerate() {
            let item = self.element(index, element);
            let Some(name) = item.str(r) else {
                events = None;
                continue;
            };
            match (Event::parse(name), &mut events) {
                (Some(e), Some(events)) => {
                    events.insert(e);
                }
                (Some(_), None) => {}
                (None, _) => {
                    let close = did_you_mean(name, Event::ALL.iter().map(|e| e.name()))
                        .map(|c| format!("did you mean {}? ", quoted(c)))
                        .unwrap_or_default();
                    r.error(
                        item.value_at(),
                        format!(
                            "{} is not an event; {close}events are {}",
                            quoted(name),
                            names()
                        ),
                    );
                    events = None;
                }
            }
        }
        events
    }
}
