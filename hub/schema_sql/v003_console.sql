-- scanfleet hub schema v3: the fleet console's own tables.
-- The console's own tables: people, sessions, login failures, the audit log of every
-- action, alarm acknowledgements and the history of configurations pushed from it.
CREATE TABLE console_users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE,
    password_hash text NOT NULL,                      -- argon2id, PHC string
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    sites         text[] NOT NULL DEFAULT '{}',       -- empty: every site
    language      text NOT NULL DEFAULT 'en' CHECK (language IN ('en', 'zh_Hans')),
    timezone      text NOT NULL DEFAULT 'Asia/Shanghai',
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE console_sessions (
    token_hash  text PRIMARY KEY,                     -- SHA-256 of the cookie value
    user_id     bigint NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    csrf        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE TABLE console_login_failures (
    id        bigserial PRIMARY KEY,
    username  text NOT NULL,
    address   text NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_login_failures_at ON console_login_failures (at);
CREATE TABLE console_audit (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    username  text NOT NULL,
    address   text NOT NULL,
    action    text NOT NULL,
    target    text NOT NULL DEFAULT '',
    detail    jsonb NOT NULL DEFAULT '{}',
    result    text NOT NULL
);
CREATE INDEX console_audit_at ON console_audit (at DESC);
CREATE TABLE console_alarm_acks (
    site      text NOT NULL,
    device    text NOT NULL,
    code      text NOT NULL,
    since     text NOT NULL,                          -- the alarm's own "since": a new raise is a new alarm
    acked_by  text NOT NULL,
    acked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, device, code, since)
);
CREATE TABLE console_config_pushes (
    id         bigserial PRIMARY KEY,
    site       text NOT NULL,
    device     text NOT NULL,
    version    integer NOT NULL,
    document   jsonb NOT NULL,
    diff       text NOT NULL,
    pushed_by  text NOT NULL,
    pushed_at  timestamptz NOT NULL DEFAULT now(),
    result     text,                                  -- applied, rejected, rolled_back, … or NULL (no report)
    report     jsonb
);
CREATE INDEX console_config_pushes_device ON console_config_pushes (site, device, id DESC);
