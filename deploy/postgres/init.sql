-- One database per service (a service reads and writes only its own; the
-- gateway keeps none: its process hosts identity, which owns warmi_identity).
-- The postgres image runs this once, as POSTGRES_USER, when the data volume is
-- first initialised; `warmi migrate` then creates and upgrades the tables.
CREATE DATABASE warmi_cases;
CREATE DATABASE warmi_notifications;
CREATE DATABASE warmi_referrals;
CREATE DATABASE warmi_identity;
