// Runs once, when MongoDB starts on an empty data volume (docker-entrypoint-initdb.d, as the root user that
// MONGO_INITDB_ROOT_USERNAME/PASSWORD created): the user the app connects as (HEALTHMATE_MONGODB_URL),
// with read and write on the app's database only.
const password = process.env.HEALTHMATE_MONGO_PASSWORD;
if (!password) {
  throw new Error("HEALTHMATE_MONGO_PASSWORD is not set");
}
db.getSiblingDB("admin").createUser({
  user: "healthmate",
  pwd: password,
  roles: [{ role: "readWrite", db: "healthmate" }],
});
