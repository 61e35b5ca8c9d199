/*
 * Mosquitto 2.0 plugin (plugin API version 5) that routes AWS IoT reserved
 * topics to an IoT Core emulator over a Unix stream socket.
 *
 * For every PUBLISH whose topic starts with "$aws/", the plugin connects to
 * the socket named by `plugin_opt_socket`, sends the request and reads back
 * a list of replies. Each reply is published with
 * mosquitto_broker_publish_copy() to the client id that sent the request.
 * The broker (2.0.11, src/loop.c queue_plugin_msgs) delivers a message with
 * a client id straight into that client's queue, without a subscription,
 * which is how AWS IoT Core replies to a client that never subscribed.
 * Replies with a delay are kept and published from MOSQ_EVT_TICK, which the
 * broker fires on every main loop pass (at least every 100 ms in 2.0.11).
 *
 * Wire format, all integers unsigned 32-bit big-endian:
 *   request:  len, client id, len, topic, len, payload
 *   response: count, then count times: delay_ms, len, topic, len, payload
 * The plugin opens one connection per request. If the emulator is gone or
 * sends something malformed, the plugin logs it and drops the replies.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* These come from mosquitto.h (libmosquitto-dev), which the broker plugin
 * headers do not need otherwise. Values are those of mosquitto 2.0.11. */
#ifndef MOSQ_ERR_SUCCESS
#define MOSQ_ERR_SUCCESS 0
#define MOSQ_ERR_NOMEM 1
#define MOSQ_ERR_INVAL 3
#endif
#ifndef MOSQ_LOG_INFO
#define MOSQ_LOG_INFO (1 << 0)
#define MOSQ_LOG_WARNING (1 << 2)
#define MOSQ_LOG_ERR (1 << 3)
#endif

#define TOPIC_PREFIX "$aws/"
#define MAX_TOPIC_LEN 65535u
#define MAX_PAYLOAD_LEN (1024u * 1024u)
#define MAX_REPLIES 16u
#define MAX_PENDING 256u
#define IO_TIMEOUT_S 5

struct reply {
	uint32_t delay_ms;
	char *topic;
	uint8_t *payload;
	uint32_t payload_len;
};

struct pending_reply {
	struct pending_reply *next;
	uint64_t due_ms;
	char *client_id;
	struct reply reply;
};

static mosquitto_plugin_id_t *plugin_id;
static struct sockaddr_un emulator_addr;
static struct pending_reply *pending_head;
static unsigned pending_count;

static uint64_t monotonic_ms(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
}

static bool write_all(int fd, const void *data, size_t len)
{
	const uint8_t *cursor = data;

	while(len > 0){
		ssize_t written = send(fd, cursor, len, MSG_NOSIGNAL);
		if(written < 0 && errno == EINTR){
			continue;
		}
		if(written <= 0){
			return false;
		}
		cursor += written;
		len -= (size_t)written;
	}
	return true;
}

static bool read_all(int fd, void *data, size_t len)
{
	uint8_t *cursor = data;

	while(len > 0){
		ssize_t got = recv(fd, cursor, len, 0);
		if(got < 0 && errno == EINTR){
			continue;
		}
		if(got <= 0){
			return false;
		}
		cursor += got;
		len -= (size_t)got;
	}
	return true;
}

static bool write_u32(int fd, uint32_t value)
{
	uint8_t bytes[4] = {
		(uint8_t)(value >> 24), (uint8_t)(value >> 16),
		(uint8_t)(value >> 8), (uint8_t)value,
	};
	return write_all(fd, bytes, sizeof(bytes));
}

static bool read_u32(int fd, uint32_t *value)
{
	uint8_t bytes[4];

	if(!read_all(fd, bytes, sizeof(bytes))){
		return false;
	}
	*value = ((uint32_t)bytes[0] << 24) | ((uint32_t)bytes[1] << 16)
		| ((uint32_t)bytes[2] << 8) | (uint32_t)bytes[3];
	return true;
}

static bool write_field(int fd, const void *data, uint32_t len)
{
	return write_u32(fd, len) && (len == 0 || write_all(fd, data, len));
}

/* Reads a length-prefixed field of at most max_len bytes into a new buffer
 * with a terminating NUL, so topics can be used as C strings. */
static bool read_field(int fd, uint32_t max_len, uint8_t **out, uint32_t *out_len)
{
	uint32_t len;
	uint8_t *buffer;

	if(!read_u32(fd, &len) || len > max_len){
		return false;
	}
	buffer = malloc((size_t)len + 1);
	if(buffer == NULL){
		return false;
	}
	if(len > 0 && !read_all(fd, buffer, len)){
		free(buffer);
		return false;
	}
	buffer[len] = '\0';
	*out = buffer;
	*out_len = len;
	return true;
}

static void free_reply(struct reply *reply)
{
	free(reply->topic);
	free(reply->payload);
	reply->topic = NULL;
	reply->payload = NULL;
}

static int connect_emulator(void)
{
	struct timeval timeout = { .tv_sec = IO_TIMEOUT_S, .tv_usec = 0 };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if(fd < 0){
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
	if(connect(fd, (const struct sockaddr *)&emulator_addr, sizeof(emulator_addr)) != 0){
		close(fd);
		return -1;
	}
	return fd;
}

/* Sends one request and reads its replies. Returns the number of replies
 * stored in `replies`, or -1 on any failure (nothing is left allocated). */
static int exchange(const char *client_id, const char *topic,
		const void *payload, uint32_t payload_len, struct reply *replies)
{
	uint32_t count;
	uint32_t i;
	int fd = connect_emulator();

	if(fd < 0){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fp_emulator: connect to %s failed: %s; dropping request on %s",
				emulator_addr.sun_path, strerror(errno), topic);
		return -1;
	}
	if(!write_field(fd, client_id, (uint32_t)strlen(client_id))
			|| !write_field(fd, topic, (uint32_t)strlen(topic))
			|| !write_field(fd, payload, payload_len)
			|| !read_u32(fd, &count)
			|| count > MAX_REPLIES){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fp_emulator: exchange with %s failed for %s; dropping request",
				emulator_addr.sun_path, topic);
		close(fd);
		return -1;
	}
	for(i = 0; i < count; i++){
		uint32_t topic_len;
		struct reply *reply = &replies[i];

		reply->topic = NULL;
		reply->payload = NULL;
		if(!read_u32(fd, &reply->delay_ms)
				|| !read_field(fd, MAX_TOPIC_LEN, (uint8_t **)&reply->topic, &topic_len)
				|| !read_field(fd, MAX_PAYLOAD_LEN, &reply->payload, &reply->payload_len)){
			mosquitto_log_printf(MOSQ_LOG_ERR,
					"fp_emulator: malformed reply %u from %s for %s; dropping all replies",
					i, emulator_addr.sun_path, topic);
			free_reply(reply);
			while(i > 0){
				i--;
				free_reply(&replies[i]);
			}
			close(fd);
			return -1;
		}
	}
	close(fd);
	return (int)count;
}

static void publish_reply(const char *client_id, const struct reply *reply)
{
	int rc = mosquitto_broker_publish_copy(client_id, reply->topic,
			(int)reply->payload_len, reply->payload, 0, false, NULL);

	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fp_emulator: publish to client %s on %s failed (error %d)",
				client_id, reply->topic, rc);
	}
}

/* Takes ownership of the reply buffers. */
static void keep_pending(const char *client_id, struct reply *reply)
{
	struct pending_reply *pending;

	if(pending_count >= MAX_PENDING){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"fp_emulator: %u delayed replies already queued; dropping reply on %s",
				pending_count, reply->topic);
		free_reply(reply);
		return;
	}
	pending = calloc(1, sizeof(*pending));
	if(pending == NULL || (pending->client_id = strdup(client_id)) == NULL){
		free(pending);
		free_reply(reply);
		return;
	}
	pending->due_ms = monotonic_ms() + reply->delay_ms;
	pending->reply = *reply;
	pending->next = pending_head;
	pending_head = pending;
	pending_count++;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *message = event_data;
	struct reply replies[MAX_REPLIES];
	const char *client_id;
	int count;
	int i;

	(void)event;
	(void)userdata;
	if(message->topic == NULL
			|| strncmp(message->topic, TOPIC_PREFIX, strlen(TOPIC_PREFIX)) != 0){
		return MOSQ_ERR_SUCCESS;
	}
	client_id = mosquitto_client_id(message->client);
	if(client_id == NULL){
		return MOSQ_ERR_SUCCESS;
	}
	count = exchange(client_id, message->topic, message->payload,
			message->payloadlen, replies);
	for(i = 0; i < count; i++){
		if(replies[i].delay_ms == 0){
			publish_reply(client_id, &replies[i]);
			free_reply(&replies[i]);
		}else{
			keep_pending(client_id, &replies[i]);
		}
	}
	/* The request itself is still routed as a normal message. */
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	struct pending_reply **link = &pending_head;
	uint64_t now = monotonic_ms();

	(void)event;
	(void)event_data;
	(void)userdata;
	while(*link != NULL){
		struct pending_reply *pending = *link;

		if(pending->due_ms <= now){
			*link = pending->next;
			publish_reply(pending->client_id, &pending->reply);
			free_reply(&pending->reply);
			free(pending->client_id);
			free(pending);
			pending_count--;
		}else{
			link = &pending->next;
		}
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	(void)supported_version_count;
	(void)supported_versions;
	return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	const char *socket_path = NULL;
	int i;

	*userdata = NULL;
	for(i = 0; i < option_count; i++){
		if(options[i].key != NULL && strcmp(options[i].key, "socket") == 0){
			socket_path = options[i].value;
		}
	}
	if(socket_path == NULL || socket_path[0] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fp_emulator: missing plugin_opt_socket (path of the emulator Unix socket)");
		return MOSQ_ERR_INVAL;
	}
	if(strlen(socket_path) >= sizeof(emulator_addr.sun_path)){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fp_emulator: plugin_opt_socket %s is longer than %zu bytes; use a shorter path",
				socket_path, sizeof(emulator_addr.sun_path) - 1);
		return MOSQ_ERR_INVAL;
	}
	memset(&emulator_addr, 0, sizeof(emulator_addr));
	emulator_addr.sun_family = AF_UNIX;
	strcpy(emulator_addr.sun_path, socket_path);

	plugin_id = identifier;
	if(mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL)
			!= MOSQ_ERR_SUCCESS
			|| mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL)
			!= MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fp_emulator: callback registration failed");
		return MOSQ_ERR_INVAL;
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "fp_emulator: forwarding %s* to %s",
			TOPIC_PREFIX, emulator_addr.sun_path);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	while(pending_head != NULL){
		struct pending_reply *pending = pending_head;

		pending_head = pending->next;
		free_reply(&pending->reply);
		free(pending->client_id);
		free(pending);
	}
	pending_count = 0;
	return MOSQ_ERR_SUCCESS;
}
