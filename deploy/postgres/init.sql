-- One database per service (a service reads and writes only its own).
-- The postgres image runs this once, as POSTGRES_USER, when the data volume is
-- first initialised; `warmi migrate` then creates and upgrades the tables.
-- The referrals service keeps no database yet.
CREATE DATABASE warmi_cases;
CREATE DATABASE warmi_notifications;
CREATE DATABASE warmi_gateway;
