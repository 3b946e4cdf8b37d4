"""Per-destination transforms applied on the way out: coercion, de-identification, transcoding.

The stored spool object is never changed: a transform writes a new Part 10 file for one
delivery, the sender sends that file, and it is deleted after the send. See docs/transforms.md.

    settings.py     the `destinations.NAME.transform` section, validated at load
    tags.py         naming an attribute in config: a keyword or (gggg,eeee)
    coerce.py       set / remove / map attribute values
    profile.py      the PS3.15 Annex E action table (Basic Application Level Confidentiality)
    errors.py       TransformError: this instance cannot be transformed as configured
    keys.py         keyed, deterministic replacement UIDs and patient pseudonyms
    deidentify.py   the Basic profile applied to a data set
    rewrite.py      Part 10 in, Part 10 out: header edited, Pixel Data copied as bytes
    pipeline.py     the configured steps for one outgoing instance, and what was done
    sender.py       sender middleware: transform each instance of a batch, then send
"""
