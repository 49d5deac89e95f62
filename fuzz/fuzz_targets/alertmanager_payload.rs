//! `POST /alertmanager` bodies: any bytes are a 400 with a reason, or alerts each with an anomaly
//! name and details or the reason it has none; never a panic. Names are valid, and details are
//! one JSON object on one line, as records need.
#![no_main]

use autohealer::anomaly::validate_name;
use autohealer::http::parse_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let Ok(alerts) = parse_payload(body) else {
        return;
    };
    for (name, details) in alerts.into_iter().flatten() {
        assert!(validate_name(&name).is_ok(), "{name:?}");
        let json = details.as_json();
        assert!(
            !json.contains(['\n', '\r']),
            "details on more than one line: {json:?}"
        );
    }
});
