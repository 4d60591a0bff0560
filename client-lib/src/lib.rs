//! The BlazeDB client: talk to the local `blazed` agent from async Rust.
//!
//! ```no_run
//! # async fn demo() -> Result<(), blazedb::Error> {
//! use blazedb::{Client, FilterOp};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Bug { title: String, priority: i64 }
//!
//! let client = Client::connect().await?;
//! let db = client.db("bugs");
//! db.create_if_missing().await?;
//! let bugs = db.collection("bugs");
//! let id = bugs.insert(&Bug { title: "Fix login".into(), priority: 5 }).await?;
//! let bug: Option<Bug> = bugs.get(&id).await?;
//! let urgent = bugs.query().filter("priority", FilterOp::Gt, 3).fetch().await?;
//! # let _ = (bug, urgent); Ok(()) }
//! ```
//!
//! Every method sends one request; calls from many tasks share the
//! connection and are pipelined.

mod conn;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use blazedb_proto::api::{DbInfo, DbSettings, Write};
use blazedb_proto::codec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

pub use blazedb_proto::api;
pub use blazedb_proto::api::{
    Change, ChangeKind, Durability, Filter, FilterOp, ID_FIELD, Record, StatusResult, SyncMode,
    WriteResult,
};
pub use blazedb_proto::apps::{self, AppAccess, AppGrant, AppInfo};
pub use blazedb_proto::paths::{OWNER_TOKEN_FILE, default_data_dir, default_socket_path};
pub use blazedb_proto::rules;
pub use blazedb_proto::{ErrorCode, ErrorInfo, Fields, Hlc, Timestamp, Uuid, Value};

#[cfg(feature = "cli")]
pub mod cli;

/// Anything that can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers on the socket.
    #[error(
        "no BlazeDB agent is listening on {path} ({source}); start it with `blazed`, \
         or point BLAZED_SOCKET at the socket it uses"
    )]
    AgentNotRunning {
        /// The socket path tried.
        path: String,
        /// Why connecting failed.
        source: std::io::Error,
    },
    /// The connection to the agent was lost.
    #[error("lost the connection to the agent")]
    Disconnected,
    /// The agent answered with an error.
    #[error("{0}")]
    Agent(ErrorInfo),
    /// The request is over the agent's frame limit; nothing was sent.
    #[error("the request is {len} bytes, over the agent's frame limit of {max}; send less at once")]
    TooLarge {
        /// The request's size.
        len: u64,
        /// The limit.
        max: u32,
    },
    /// A value could not be encoded or decoded.
    #[error("encoding error: {0}")]
    Codec(String),
    /// Reading or writing the socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The agent's error code, if the agent refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        conn::agent_error(self).map(|i| i.code)
    }
}

/// A connection to the agent. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    conn: Arc<conn::Connection>,
    hello: Arc<api::HelloResult>,
}

/// The environment variable naming the app a client connects as.
pub const APP_ENV: &str = "BLAZEDB_APP";
/// The environment variable holding that app's token.
pub const APP_TOKEN_ENV: &str = "BLAZEDB_APP_TOKEN";

/// Who a client says it is when it connects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Login {
    /// The client's name, for the agent's logs.
    pub client: String,
    /// The app to connect as, with its token; the device's owner when
    /// missing.
    pub app: Option<String>,
    /// The app's token, or without `app` the owner token.
    pub token: Option<String>,
}

impl Login {
    /// The owner, or the app named by `BLAZEDB_APP` with the token in
    /// `BLAZEDB_APP_TOKEN` when they are set.
    pub fn from_env(client: &str) -> Login {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        Login {
            client: client.to_owned(),
            app: var(APP_ENV),
            token: var(APP_TOKEN_ENV),
        }
    }

    /// The app `app` with its `token`.
    pub fn app(app: &str, token: &str) -> Login {
        Login {
            client: env!("CARGO_PKG_NAME").to_owned(),
            app: Some(app.to_owned()),
            token: Some(token.to_owned()),
        }
    }
}

impl Client {
    /// Connects to the agent at the default socket (`$BLAZED_SOCKET`, or
    /// `blazed.sock` in the runtime directory), as the app in
    /// `BLAZEDB_APP` and `BLAZEDB_APP_TOKEN` if they are set.
    pub async fn connect() -> Result<Client, Error> {
        Client::connect_to(default_socket_path()).await
    }

    /// Connects to the agent listening on `socket`, as the app in
    /// `BLAZEDB_APP` and `BLAZEDB_APP_TOKEN` if they are set.
    pub async fn connect_to(socket: impl AsRef<Path>) -> Result<Client, Error> {
        Client::connect_with(socket, Login::from_env(env!("CARGO_PKG_NAME"))).await
    }

    /// Connects to the agent at the default socket as the app `app`,
    /// with its token.
    pub async fn connect_as(app: &str, token: &str) -> Result<Client, Error> {
        Client::connect_with(default_socket_path(), Login::app(app, token)).await
    }

    /// Connects to the agent listening on `socket` as `login` says.
    pub async fn connect_with(socket: impl AsRef<Path>, login: Login) -> Result<Client, Error> {
        let conn = conn::Connection::open(socket.as_ref()).await?;
        let hello = conn
            .call::<api::Hello>(&api::HelloParams {
                protocol: blazedb_proto::PROTOCOL_VERSION,
                client: login.client,
                app: login.app,
                token: login.token,
            })
            .await?;
        conn.max_frame.store(hello.max_frame, Ordering::Relaxed);
        Ok(Client {
            conn: Arc::new(conn),
            hello: Arc::new(hello),
        })
    }

    /// The app the agent took this client for; `None` for the owner.
    pub fn app(&self) -> Option<&str> {
        self.hello.app.as_deref()
    }

    /// The id of the agent's device.
    pub fn device_id(&self) -> &str {
        &self.hello.device_id
    }

    /// The agent's name and version.
    pub fn agent_version(&self) -> &str {
        &self.hello.agent
    }

    /// Calls any method; the typed helpers below are built on this.
    pub async fn call<M: blazedb_proto::Method>(
        &self,
        params: &M::Params,
    ) -> Result<M::Result, Error> {
        self.conn.call::<M>(params).await
    }

    /// Reports on the agent.
    pub async fn status(&self) -> Result<StatusResult, Error> {
        self.call::<api::Status>(&api::Empty {}).await
    }

    /// Lists the databases.
    pub async fn databases(&self) -> Result<Vec<DbInfo>, Error> {
        Ok(self.call::<api::DbList>(&api::Empty {}).await?.databases)
    }

    /// This device's identity and mesh.
    pub async fn mesh_status(&self) -> Result<api::MeshStatusResult, Error> {
        self.call::<api::MeshStatus>(&api::Empty {}).await
    }

    /// Creates a mesh with this device as its first member.
    pub async fn create_mesh(&self) -> Result<api::MeshStatusResult, Error> {
        self.call::<api::MeshCreate>(&api::Empty {}).await
    }

    /// Makes an invite code for another device: valid for `ttl_secs`
    /// (default an hour), for `uses` devices (default one, 0 for any).
    pub async fn invite(
        &self,
        ttl_secs: Option<u64>,
        uses: Option<u32>,
    ) -> Result<api::MeshInviteResult, Error> {
        self.invite_with(api::MeshInviteParams {
            ttl_secs,
            uses,
            teams: Vec::new(),
        })
        .await
    }

    /// Makes an invite code with every setting given, teams included.
    pub async fn invite_with(
        &self,
        params: api::MeshInviteParams,
    ) -> Result<api::MeshInviteResult, Error> {
        self.call::<api::MeshInvite>(&params).await
    }

    /// Joins the mesh of an invite code; returns once the inviter has let
    /// this device in.
    pub async fn join(&self, code: &str) -> Result<api::MeshStatusResult, Error> {
        self.call::<api::MeshJoin>(&api::MeshJoinParams {
            code: code.to_owned(),
        })
        .await
    }

    /// Removes a device from the mesh, on every member (admins only).
    /// `device` is its id, 7 or more of its first characters, or its name.
    pub async fn remove_device(&self, device: &str) -> Result<api::MeshStatusResult, Error> {
        self.call::<api::MeshRemove>(&api::MeshRemoveParams {
            device: device.to_owned(),
        })
        .await
    }

    /// Makes a device an admin of the mesh, or takes that away (admins
    /// only).
    pub async fn set_admin(
        &self,
        device: &str,
        admin: bool,
    ) -> Result<api::MeshStatusResult, Error> {
        self.call::<api::MeshAdmin>(&api::MeshAdminParams {
            device: device.to_owned(),
            admin,
        })
        .await
    }

    /// Sets a device's name or teams (admins only).
    pub async fn set_device(
        &self,
        device: &str,
        name: Option<&str>,
        teams: Option<Vec<String>>,
    ) -> Result<api::PeerInfo, Error> {
        self.call::<api::MeshDeviceSet>(&api::MeshDeviceSetParams {
            device: device.to_owned(),
            name: name.map(str::to_owned),
            teams,
        })
        .await
    }

    /// Leaves the mesh: the members are told, this device forgets the
    /// mesh and keeps its databases.
    pub async fn leave_mesh(&self) -> Result<api::MeshStatusResult, Error> {
        self.call::<api::MeshLeave>(&api::Empty {}).await
    }

    /// The mesh's members and their links.
    pub async fn peers(&self) -> Result<Vec<api::PeerInfo>, Error> {
        Ok(self.call::<api::Peers>(&api::Empty {}).await?.peers)
    }

    /// This device's link with every member, per database, with rates and
    /// lag (owner only).
    pub async fn topology(&self) -> Result<blazedb_proto::topology::TopologyResult, Error> {
        self.call::<api::Topology>(&api::Empty {}).await
    }

    /// Where the agent serves its dashboard and metrics, with their tokens
    /// (owner only).
    pub async fn dashboard(&self) -> Result<blazedb_proto::topology::DashboardResult, Error> {
        self.call::<api::Dashboard>(&api::Empty {}).await
    }

    /// Adds a local app with `grants` (owner only); returns it with its
    /// token, which is shown this once. `uid` binds it to another user's
    /// processes.
    pub async fn add_app(
        &self,
        name: &str,
        grants: Vec<AppGrant>,
        uid: Option<u32>,
    ) -> Result<apps::AppAddResult, Error> {
        self.call::<api::AppAdd>(&apps::AppAddParams {
            name: name.to_owned(),
            grants,
            uid,
        })
        .await
    }

    /// Every local app (owner only).
    pub async fn apps(&self) -> Result<Vec<AppInfo>, Error> {
        Ok(self.call::<api::AppList>(&api::Empty {}).await?.apps)
    }

    /// One local app (owner only).
    pub async fn app_info(&self, name: &str) -> Result<AppInfo, Error> {
        self.call::<api::AppShow>(&apps::AppName {
            name: name.to_owned(),
        })
        .await
    }

    /// Removes an app and cuts its connections (owner only). Returns
    /// `false` if there was none of that name.
    pub async fn remove_app(&self, name: &str) -> Result<bool, Error> {
        let r = self
            .call::<api::AppRemove>(&apps::AppName {
                name: name.to_owned(),
            })
            .await?;
        Ok(r.dropped)
    }

    /// Gives an app `grant`, replacing its grant on the same database and
    /// collection (owner only).
    pub async fn grant_app(&self, name: &str, grant: AppGrant) -> Result<AppInfo, Error> {
        self.call::<api::AppGrantAdd>(&apps::AppGrantParams {
            name: name.to_owned(),
            grant,
        })
        .await
    }

    /// Takes back an app's grants on `db`, or on one collection of it, and
    /// cuts its connections (owner only).
    pub async fn revoke_app(
        &self,
        name: &str,
        db: &str,
        collection: Option<&str>,
    ) -> Result<AppInfo, Error> {
        self.call::<api::AppRevoke>(&apps::AppRevokeParams {
            name: name.to_owned(),
            db: db.to_owned(),
            collection: collection.map(str::to_owned),
        })
        .await
    }

    /// Adds an address (`host:port`) to dial always. Returns `false` if it
    /// was there already.
    pub async fn add_peer(&self, addr: &str) -> Result<bool, Error> {
        let r = self
            .call::<api::PeerAdd>(&api::PeerAddParams {
                addr: addr.to_owned(),
            })
            .await?;
        Ok(r.created)
    }

    /// Stops dialling an address always. Returns `false` if it was not
    /// one.
    pub async fn remove_peer(&self, addr: &str) -> Result<bool, Error> {
        let r = self
            .call::<api::PeerRemove>(&api::PeerAddParams {
                addr: addr.to_owned(),
            })
            .await?;
        Ok(r.dropped)
    }

    /// The addresses dialled always, with how each fares.
    pub async fn static_peers(&self) -> Result<Vec<api::StaticPeerInfo>, Error> {
        Ok(self.call::<api::PeerList>(&api::Empty {}).await?.peers)
    }

    /// A handle to the database `name` (which may not exist yet).
    pub fn db(&self, name: &str) -> Db {
        Db {
            client: self.clone(),
            name: name.to_owned(),
        }
    }
}

/// A database on the agent.
#[derive(Debug, Clone)]
pub struct Db {
    client: Client,
    name: String,
}

impl Db {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the database with default settings; fails if it exists.
    pub async fn create(&self) -> Result<DbInfo, Error> {
        self.create_with(DbSettings::default(), false).await
    }

    /// Creates the database unless it exists already.
    pub async fn create_if_missing(&self) -> Result<DbInfo, Error> {
        self.create_with(DbSettings::default(), true).await
    }

    /// Creates the database with the given settings.
    pub async fn create_with(
        &self,
        settings: DbSettings,
        if_not_exists: bool,
    ) -> Result<DbInfo, Error> {
        self.client
            .call::<api::DbCreate>(&api::DbCreateParams {
                name: self.name.clone(),
                settings,
                if_not_exists,
            })
            .await
    }

    /// Describes the database.
    pub async fn info(&self) -> Result<DbInfo, Error> {
        self.client
            .call::<api::DbOpen>(&api::DbName {
                name: self.name.clone(),
            })
            .await
    }

    /// Changes the conflict priority of this device's writes or the
    /// durability of writes, from the next write on; `None` keeps one as
    /// it is.
    pub async fn set_settings(
        &self,
        priority: Option<u8>,
        durability: Option<api::Durability>,
    ) -> Result<DbInfo, Error> {
        self.client
            .call::<api::DbSet>(&api::DbSetParams {
                name: self.name.clone(),
                priority,
                durability,
            })
            .await
    }

    /// Sets the devices this device syncs the database with, each by id,
    /// id prefix or name, with a direction; `None` syncs it with every
    /// member again. Applies at once.
    pub async fn set_peers(&self, peers: Option<Vec<api::DbPeer>>) -> Result<DbInfo, Error> {
        self.client
            .call::<api::DbPeers>(&api::DbPeersParams {
                name: self.name.clone(),
                peers,
            })
            .await
    }

    /// Sets how the database takes part in sync (`Local`: not at all).
    pub async fn set_sync_mode(&self, mode: SyncMode) -> Result<DbInfo, Error> {
        self.client
            .call::<api::DbSync>(&api::DbSyncParams {
                name: self.name.clone(),
                sync_mode: mode,
                wish: None,
            })
            .await
    }

    /// Sets how the database takes part in sync and what of it this
    /// device asks to receive (never more than its access rule allows;
    /// an empty wish asks for all of it).
    pub async fn set_sync(
        &self,
        mode: SyncMode,
        wish: blazedb_proto::rules::SyncWish,
    ) -> Result<DbInfo, Error> {
        self.client
            .call::<api::DbSync>(&api::DbSyncParams {
                name: self.name.clone(),
                sync_mode: mode,
                wish: Some(wish),
            })
            .await
    }

    /// Sets the database's access rules and links (this device must be a
    /// mesh admin): what devices no rule selects get, the rules (first
    /// match wins) and who syncs with whom (every member with every other
    /// when `links` is empty). They replace the ones before, reach every
    /// member, and every member enforces them.
    pub async fn set_rules(
        &self,
        default: blazedb_proto::rules::AccessLevel,
        rules: Vec<api::RuleSpec>,
        links: Vec<api::LinkSpec>,
    ) -> Result<api::DbRulesResult, Error> {
        self.client
            .call::<api::DbRulesSet>(&api::DbRulesSetParams {
                db: self.name.clone(),
                default,
                rules,
                links,
            })
            .await
    }

    /// Gives `device` (a member, by name, id or id prefix) every key of
    /// this end-to-end encrypted database the agent's device holds (mesh
    /// admins only; meant for hubs, as devices with access get keys on
    /// their own).
    pub async fn grant_key(&self, device: &str) -> Result<api::DbKeyGrantResult, Error> {
        self.client
            .call::<api::DbKeyGrant>(&api::DbKeyGrantParams {
                name: self.name.clone(),
                device: device.to_owned(),
            })
            .await
    }

    /// Makes the next key epoch of this end-to-end encrypted database and
    /// grants it to every member that may hold it; returns the database
    /// with its new `key_epoch`.
    pub async fn rotate_key(&self) -> Result<DbInfo, Error> {
        self.client
            .call::<api::DbKeyRotate>(&api::DbName {
                name: self.name.clone(),
            })
            .await
    }

    /// The database's access rules, and what they give this device.
    pub async fn rules(&self) -> Result<api::DbRulesResult, Error> {
        self.client
            .call::<api::DbRulesGet>(&api::DbName {
                name: self.name.clone(),
            })
            .await
    }

    /// Deletes the database and everything in it. Returns false if there was
    /// no such database.
    pub async fn drop_db(&self) -> Result<bool, Error> {
        let r = self
            .client
            .call::<api::DbDrop>(&api::DbDropParams {
                name: self.name.clone(),
                if_exists: true,
            })
            .await?;
        Ok(r.dropped)
    }

    /// A handle to one collection.
    pub fn collection(&self, name: &str) -> Collection {
        Collection {
            db: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Starts an atomic batch of writes.
    pub fn batch(&self) -> Batch {
        Batch::new(self.clone())
    }

    /// Streams every change to the database made from now on.
    pub async fn subscribe(&self) -> Result<Subscription, Error> {
        self.subscribe_from(None, None).await
    }

    /// Streams changes to the database (or one collection), replaying every
    /// change after `since` first.
    pub async fn subscribe_from(
        &self,
        collection: Option<&str>,
        since: Option<u64>,
    ) -> Result<Subscription, Error> {
        self.subscribe_with(collection, since, None).await
    }

    /// Resumes a subscription after `since`, a cursor of the change log
    /// `log` (both from [`Subscription::resume_point`]): fails with
    /// `cursor_expired` when the agent has since handed that cursor out
    /// again (it restarted after a crash, a restore or a damaged journal),
    /// so the caller reads the records again instead of missing changes.
    pub async fn resume(
        &self,
        collection: Option<&str>,
        since: u64,
        log: u64,
    ) -> Result<Subscription, Error> {
        self.subscribe_with(collection, Some(since), Some(log))
            .await
    }

    async fn subscribe_with(
        &self,
        collection: Option<&str>,
        since: Option<u64>,
        log: Option<u64>,
    ) -> Result<Subscription, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let params = api::SubscribeParams {
            db: self.name.clone(),
            collection: collection.map(str::to_owned),
            since,
            log,
        };
        let r = self.client.conn.subscribe(&params, tx).await?;
        Ok(Subscription {
            client: self.client.clone(),
            id: r.subscription,
            cursor: r.cursor,
            log: r.log,
            rx,
            ready: std::collections::VecDeque::new(),
            ended: None,
        })
    }
}

/// A collection of records.
#[derive(Debug, Clone)]
pub struct Collection {
    db: Db,
    name: String,
}

fn fields_of<T: Serialize + ?Sized>(value: &T) -> Result<Fields, Error> {
    codec::to_fields(value).map_err(|e| Error::Codec(e.0))
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn write(&self, w: Write) -> Result<WriteResult, Error> {
        let mut results = self
            .db
            .batch()
            .add(|out| w.encode_into(out))
            .commit()
            .await?;
        results.pop().ok_or(Error::Disconnected)
    }

    /// Stores a new record under an id the agent picks; returns the id.
    pub async fn insert<T: Serialize + ?Sized>(&self, value: &T) -> Result<String, Error> {
        let params = api::PutParams {
            db: self.db.name.clone(),
            collection: self.name.clone(),
            id: None,
            fields: fields_of(value)?,
        };
        Ok(self.db.client.call::<api::Put>(&params).await?.id)
    }

    /// Writes the whole record `id` (creating or replacing it).
    pub async fn put<T: Serialize + ?Sized>(
        &self,
        id: &str,
        value: &T,
    ) -> Result<WriteResult, Error> {
        self.put_fields(id, fields_of(value)?).await
    }

    /// Writes the whole record `id` from raw fields.
    pub async fn put_fields(&self, id: &str, fields: Fields) -> Result<WriteResult, Error> {
        let params = api::PutParams {
            db: self.db.name.clone(),
            collection: self.name.clone(),
            id: Some(id.to_owned()),
            fields,
        };
        self.db.client.call::<api::Put>(&params).await
    }

    /// Sets some fields of the existing record `id` and removes others.
    pub async fn patch(&self, id: &str, set: Fields, unset: &[&str]) -> Result<WriteResult, Error> {
        let params = api::PatchParams {
            db: self.db.name.clone(),
            collection: self.name.clone(),
            id: id.to_owned(),
            set,
            unset: unset.iter().map(|s| (*s).to_owned()).collect(),
        };
        self.db.client.call::<api::Patch>(&params).await
    }

    /// Deletes the record `id` (succeeds if there was none).
    pub async fn delete(&self, id: &str) -> Result<WriteResult, Error> {
        self.write(Write::Delete {
            collection: self.name.clone(),
            id: id.to_owned(),
        })
        .await
    }

    /// Reads the record `id` as a `T`.
    pub async fn get<T: DeserializeOwned>(&self, id: &str) -> Result<Option<T>, Error> {
        match self.get_record(id).await? {
            Some(r) => codec::from_fields(&r.fields)
                .map(Some)
                .map_err(|e| Error::Codec(e.0)),
            None => Ok(None),
        }
    }

    /// Reads the record `id` with its raw fields and version.
    pub async fn get_record(&self, id: &str) -> Result<Option<Record>, Error> {
        let params = blazedb_proto::RawRecordRef {
            db: &self.db.name,
            collection: &self.name,
            id,
        };
        let encode = |out: &mut Vec<u8>| {
            params.encode_into(out);
            Ok(())
        };
        let conn = &self.db.client.conn;
        Ok(conn
            .call_with::<api::Get>(encode, api::GetResult::decode)
            .await?
            .record)
    }

    /// Reads many records by id in one request: one entry per id, in the
    /// same order, `None` where there is no such record. At most
    /// [`api::MAX_GET_MANY`] ids a call.
    pub async fn get_many<I: AsRef<str>>(&self, ids: &[I]) -> Result<Vec<Option<Record>>, Error> {
        let encode = |out: &mut Vec<u8>| {
            blazedb_proto::encode_get_many(out, &self.db.name, &self.name, ids);
            Ok(())
        };
        let conn = &self.db.client.conn;
        Ok(conn
            .call_with::<api::GetMany>(encode, api::GetManyResult::decode)
            .await?
            .records)
    }

    /// Starts a query over the collection.
    pub fn query(&self) -> Query {
        Query {
            collection: self.clone(),
            params: api::QueryParams {
                db: self.db.name.clone(),
                collection: self.name.clone(),
                ..Default::default()
            },
        }
    }

    fn index_params(&self, field: &str) -> api::IndexParams {
        api::IndexParams {
            db: self.db.name.clone(),
            collection: self.name.clone(),
            field: field.to_owned(),
        }
    }

    /// Adds a secondary index on `field`; returns false if it existed.
    pub async fn create_index(&self, field: &str) -> Result<bool, Error> {
        let params = self.index_params(field);
        Ok(self
            .db
            .client
            .call::<api::IndexCreate>(&params)
            .await?
            .created)
    }

    /// Removes the secondary index on `field`; returns false if there was
    /// none.
    pub async fn drop_index(&self, field: &str) -> Result<bool, Error> {
        let params = self.index_params(field);
        Ok(self
            .db
            .client
            .call::<api::IndexDrop>(&params)
            .await?
            .dropped)
    }

    /// Streams changes to this collection, replaying those after `since`.
    pub async fn subscribe(&self, since: Option<u64>) -> Result<Subscription, Error> {
        self.db.subscribe_from(Some(&self.name), since).await
    }
}

/// A query being built: add filters, an order and a limit, then fetch.
#[derive(Debug, Clone)]
pub struct Query {
    collection: Collection,
    params: api::QueryParams,
}

/// One page of query results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The records, in order.
    pub records: Vec<Record>,
    /// Pass to [`Query::after`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

impl Query {
    /// Keeps records whose `field` compares to `value` by `op`.
    pub fn filter(mut self, field: &str, op: FilterOp, value: impl Into<Value>) -> Self {
        self.params.filters.push(Filter {
            field: field.to_owned(),
            op,
            value: value.into(),
        });
        self
    }

    /// Sorts by `field` (or [`ID_FIELD`]); by id when not called.
    pub fn order_by(mut self, field: &str) -> Self {
        self.params.order_by = Some(field.to_owned());
        self
    }

    /// Sorts descending.
    pub fn desc(mut self) -> Self {
        self.params.desc = true;
        self
    }

    /// Returns at most `n` records per page.
    pub fn limit(mut self, n: u32) -> Self {
        self.params.limit = Some(n);
        self
    }

    /// Continues after the page that returned `cursor`.
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.params.cursor = Some(cursor.into());
        self
    }

    /// Fetches one page.
    pub async fn fetch(&self) -> Result<Page, Error> {
        let r = self
            .collection
            .db
            .client
            .call::<api::Query>(&self.params)
            .await?;
        Ok(Page {
            records: r.records,
            next_cursor: r.next_cursor,
        })
    }

    /// Fetches every page and returns all the records as `T`s, as
    /// [`Collection::get`] returns one.
    pub async fn fetch_all_as<T: DeserializeOwned>(&self) -> Result<Vec<T>, Error> {
        self.fetch_all()
            .await?
            .iter()
            .map(|r| r.decode().map_err(|e| Error::Codec(e.0)))
            .collect()
    }

    /// Fetches every page and returns all the records.
    pub async fn fetch_all(&self) -> Result<Vec<Record>, Error> {
        let mut q = self.clone();
        let mut out = Vec::new();
        loop {
            let page = q.fetch().await?;
            out.extend(page.records);
            match page.next_cursor {
                Some(c) => q.params.cursor = Some(c),
                None => return Ok(out),
            }
        }
    }
}

/// Writes applied together: all or none.
///
/// Each write is encoded as it is added, so the batch holds its bytes
/// rather than the values: [`Batch::put_ref`] adds a record the app keeps,
/// without a copy of it.
#[derive(Clone)]
pub struct Batch {
    db: Db,
    count: usize,
    /// The writes, encoded one after the other.
    writes: Vec<u8>,
    /// The first write that could not be encoded: committing fails with it.
    failed: Option<codec::CodecError>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("db", &self.db.name)
            .field("writes", &self.count)
            .field("bytes", &self.writes.len())
            .finish()
    }
}

impl Batch {
    fn new(db: Db) -> Batch {
        Batch {
            db,
            count: 0,
            writes: Vec::new(),
            failed: None,
        }
    }

    /// Adds a write that `encode` appends.
    fn add(mut self, encode: impl FnOnce(&mut Vec<u8>) -> Result<(), codec::CodecError>) -> Self {
        if self.failed.is_none() {
            let before = self.writes.len();
            match encode(&mut self.writes) {
                Ok(()) => self.count += 1,
                Err(e) => {
                    self.writes.truncate(before);
                    self.failed = Some(e);
                }
            }
        }
        self
    }

    /// Adds a put of the whole record (`id: None` lets the agent pick one).
    pub fn put(self, collection: &str, id: Option<&str>, fields: Fields) -> Self {
        self.put_ref(collection, id, &fields)
    }

    /// [`Batch::put`] of fields the app keeps: they are encoded into the
    /// batch at once, not copied.
    pub fn put_ref(self, collection: &str, id: Option<&str>, fields: &Fields) -> Self {
        self.add(|out| Write::encode_put(out, collection, id, fields))
    }

    /// Adds a patch.
    pub fn patch(self, collection: &str, id: &str, set: Fields, unset: &[&str]) -> Self {
        self.add(|out| Write::encode_patch(out, collection, id, &set, unset))
    }

    /// Adds a delete.
    pub fn delete(self, collection: &str, id: &str) -> Self {
        self.add(|out| {
            Write::encode_delete(out, collection, id);
            Ok(())
        })
    }

    /// How many writes the batch holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Applies the writes atomically; one result per write, in order.
    pub async fn commit(self) -> Result<Vec<WriteResult>, Error> {
        let Batch {
            db,
            count,
            writes,
            failed,
        } = self;
        let encode = |out: &mut Vec<u8>| match failed {
            Some(e) => Err(e),
            None => api::BatchParams::encode_encoded(out, &db.name, count, &writes),
        };
        Ok(db
            .client
            .conn
            .call_with::<api::Batch>(encode, api::BatchResult::decode)
            .await?
            .results)
    }
}

/// A stream of changes. Remember [`Subscription::cursor`] to resume later
/// without missing or repeating a change.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    id: u64,
    cursor: u64,
    log: u64,
    rx: mpsc::UnboundedReceiver<conn::SubMsg>,
    ready: std::collections::VecDeque<Change>,
    ended: Option<ErrorInfo>,
}

impl Subscription {
    /// Where to resume from later: the change log's id and the cursor of
    /// the last change handed out. Keep both; pass them to [`Db::resume`].
    pub fn resume_point(&self) -> (u64, u64) {
        (self.log, self.cursor)
    }

    /// The cursor of the last change handed out (or where the subscription
    /// started): pass it as `since` to resume after it.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Why the agent ended the subscription (its database was dropped, or
    /// reading its changes failed), once [`Subscription::next`] has
    /// returned `None` for that reason.
    pub fn end_reason(&self) -> Option<&ErrorInfo> {
        self.ended.as_ref()
    }

    /// The next change; `None` once the subscription or the connection
    /// has ended.
    pub async fn next(&mut self) -> Option<Change> {
        std::future::poll_fn(|cx| self.poll_change(cx)).await
    }

    fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                self.cursor = c.cursor;
                return Poll::Ready(Some(c));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(conn::SubMsg::Event(ev))) => self.ready.extend(ev.changes),
                Poll::Ready(Some(conn::SubMsg::End(e))) => {
                    self.ended = Some(e);
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Ends the subscription.
    pub async fn close(self) -> Result<(), Error> {
        self.client.conn.forget_subscription(self.id);
        self.client
            .call::<api::Unsubscribe>(&api::UnsubscribeParams {
                subscription: self.id,
            })
            .await?;
        Ok(())
    }
}

impl futures_core::Stream for Subscription {
    type Item = Change;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        self.get_mut().poll_change(cx)
    }
}

/// The socket a client uses when given `explicit`, or the default.
pub fn resolve_socket(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(default_socket_path)
}
